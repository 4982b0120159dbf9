"""The data: Criteo and Avazu preprocessing, DLRM's processed files read in blocks or memory-mapped,
DLRM's days, and how often each embedding row is trained. Below ``dlrm/`` and ``tools/``: it knows
DLRM's file formats, not its training loop."""
