"""Before the first batch: the files a run will write fit on their disks.

A full disk found at the first save loses the whole run (``--save-model``
writes only after a test). The tables are built by then, so the files' sizes
are known: ``--save-model PATH`` writes the unfolded training checkpoint
``PATH.mlet`` (tables, projections, the optimizer's state) and the folded
``PATH``; ``--mlet-checkpoint`` another training checkpoint. Each is written
beside the one it replaces before the rename (``files.atomic_write``), so each
needs its whole size free. The MLPs and the bookkeeping are small next to the
tables: a margin covers them.
"""

import os
import shutil
from typing import Dict, Iterable, List, Sequence, Tuple, cast

from torch import nn

from ..core import rules
from ..core.budget import format_bytes, training_bytes
from ..core.half import dtype_name
from ..core.pair import TwoLayer, is_mlet
from ..errors import MLETError
from ..files import StrPath
from .session import session

MARGIN = 1.05  # and 64 MiB: the MLPs, pickling, the file system's own blocks
MARGIN_BYTES = 64 * 2**20


def free_bytes(path: StrPath) -> int:
    """Bytes free for this process where ``path`` will be written (its folder's file system)."""
    return shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free


def _device(path):
    return os.stat(os.path.dirname(os.path.abspath(path)) or ".").st_dev


def file_sizes(tables: Iterable[nn.Module]) -> Tuple[int, int]:
    """``(training checkpoint bytes, folded checkpoint bytes)`` of DLRM's ``emb_l`` as built."""
    optimizer, training, folded = session.config.optimizer, 0, 0
    for t in tables:
        if is_mlet(t):
            t = cast(TwoLayer, t)  # is_mlet: an MLET form
            n, d, k = t.num_embeddings, t.embedding_dim, t.hidden_dim
            training += training_bytes(n, d, k, dtype_name(t.table.weight.dtype), optimizer)
            folded += training_bytes(n, d, 0, "fp32", optimizer)
        else:  # DLRM's own tables (plain, QR, MD): their parameters and the optimizer's state for each
            rule = rules.named(optimizer)
            size = 0
            for p in t.parameters():
                rows = p.shape[0] if p.dim() and p.shape[0] else 1
                size += p.numel() * p.element_size() + rule.state_bytes(rows, p.numel() // rows)
            training += size
            folded += size
    return training, folded


def check(tables: Iterable[nn.Module], save_model: str = "") -> None:
    """Refuse in one line, before training, a run whose files would not fit (``MLETError``)."""
    config = session.config
    if config.inference_only:
        return
    training, folded = file_sizes(tables)
    writes = []
    if save_model:
        writes += [(save_model, training + folded, f"--save-model ({format_bytes(training)} for {save_model}.mlet, "
                                                   f"{format_bytes(folded)} for {save_model})")]
    if config.checkpoint:
        writes += [(config.checkpoint, training, f"--mlet-checkpoint ({format_bytes(training)})")]
    needed: Dict[int, Tuple[int, List[str], str]] = {}  # device -> (bytes, what they are, a path there)
    for path, size, what in writes:
        device = _device(path)
        total, whats, _ = needed.get(device, (0, [], path))
        needed[device] = (total + size, whats + [what], path)
    for total, whats, path in needed.values():
        want = int(total * MARGIN) + MARGIN_BYTES
        have = free_bytes(path)
        if have < want:
            raise MLETError(f"{' and '.join(whats)} need {format_bytes(want)} free where they go, with a margin; "
                            f"{os.path.dirname(os.path.abspath(path))} has {format_bytes(have)}: free some space or "
                            "write elsewhere")


def check_runs(folder: StrPath, sizes: Sequence[int], widths: Iterable[Tuple[int, int]], optimizer: str = "sgd",
               resumable: bool = False) -> None:
    """Before a sweep's first run: the largest run's files fit in ``folder`` (``widths``: the runs' ``(d, k)``).

    A run writes its folded model, its MLET training checkpoint and, with
    ``resumable``, a second training checkpoint (``--mlet-checkpoint``), all
    deleted once its row is written: the largest run's files must fit at once.
    """
    def files(d: int, k: int) -> int:
        training = sum(training_bytes(n, d, k, "fp32", optimizer) for n in sizes)
        folded = sum(training_bytes(n, d, 0, "fp32", optimizer) for n in sizes)
        return (training if k else 0) + folded + (training if resumable else 0)

    d, k = max(widths, key=lambda w: files(*w))
    want, have = int(files(d, k) * MARGIN) + MARGIN_BYTES, free_bytes(os.path.join(folder, "x"))
    if have < want:
        raise MLETError(f"the run d={d} k={k} writes {format_bytes(want)} of checkpoints into {folder} (with a "
                        f"margin); it has {format_bytes(have)}: free some space or give --work elsewhere")
