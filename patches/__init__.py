"""The patch against facebookresearch/dlrm, shipped as package data (dlrm_mlet.patches)."""
