"""What MLET does during training, logged to DLRM's own TensorBoard writer.

Every ``--mlet-log-freq`` steps, per table and averaged over tables:

* ``MLET/effective_rank/<table>`` of the folded-equivalent table, from the
  ``d x d`` Gram of a uniform row sample (exact when the table has no more
  rows than the sample);
* ``MLET/singular_value_<i>/<table>``, the top three singular values;
* ``MLET/proj_norm/<table>``, ``||proj||_F`` of MLET tables;
* for the largest tables, ``MLET/update_frequent/<table>`` and
  ``MLET/update_rare/<table>``: the mean L2 change, since the previous log, of
  the folded rows of the 64 most used rows and of 64 rows used once or twice.
  The papers find MLET's gain largest on rare categories; this shows it.

Cost: one Gram of ``sample_rows`` rows per table per log, plus counting the
indices of the tracked tables at every step (one ``index_add_``).
"""

from typing import TYPE_CHECKING, Dict, Optional, Tuple, cast

import torch
from torch import nn

from ..core.pair import is_mlet
from ..core.spectrum import effective_rank, singular_values

if TYPE_CHECKING:  # tensorboard: DLRM's dependency, not ours
    from torch.utils.tensorboard import SummaryWriter

TOP_SINGULAR = 3
ROWS_PER_GROUP = 64


def _factors(table):
    """``(table, projection or None)`` of an embedding table as one matrix; None for a composite one.

    DLRM's mixed-dimension tables are read as their ``n x d_i`` table (MD's
    own projection after it changes no rank); a quotient-remainder table is
    two tables combined elementwise, no one matrix: it is not logged.
    """
    table = getattr(table, "embs", table)
    if is_mlet(table):
        return table.table.weight, table.proj.weight
    weight = getattr(table, "weight", None)
    return None if weight is None else (weight, None)


def _logged(model):
    """Indices of the tables that have one matrix to log."""
    return [i for i, table in enumerate(model.emb_l) if _factors(table) is not None]


def _folded_rows(table, rows):
    """Folded rows on the CPU: tables may sit on several devices (and move between logs)."""
    a, b = _factors(table)
    with torch.no_grad():
        rows_now = a[rows.to(a.device)].detach().float()
        return (rows_now if b is None else rows_now @ b.detach().float().t()).cpu()


class Monitor:
    """Counts index use on the largest tables and logs spectra every ``freq`` steps."""

    def __init__(self, freq: int, sample_rows: int = 2048, tracked_tables: int = 3, seed: int = 0) -> None:
        self.freq = freq
        self.sample_rows = sample_rows
        self.tracked_tables = tracked_tables
        self.generator = torch.Generator().manual_seed(seed)
        self.model: Optional[nn.Module] = None
        self.sizes: Dict[int, int] = {}  # tracked table -> rows
        self.counts: Dict[int, torch.Tensor] = {}  # tracked table -> uses per row, on the device its indices arrive on
        self.pending: Dict[int, torch.Tensor] = {}
        self.snapshots: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = {}
        self.steps = 0

    def attach(self, model: nn.Module) -> None:
        """Start counting index use on the largest tables.

        The hook sits on the model, not on the tables: DLRM's forward takes
        ``(dense, offsets, indices)`` for all tables, while grouped MLET tables
        are never called one by one.
        """
        self.model = model
        emb_l = cast(nn.ModuleList, model.emb_l)  # DLRM_Net's tables
        tables = sorted(_logged(model), key=lambda i: -_factors(emb_l[i])[0].shape[0])
        self.sizes = {i: _factors(emb_l[i])[0].shape[0] for i in tables[: self.tracked_tables]}
        # In DLRM's distributed mode local table i is global table local_emb_indices[i].
        self.global_index = list(getattr(model, "local_emb_indices", range(len(emb_l))))
        model.register_forward_pre_hook(self._remember)

    def _remember(self, model, inputs):
        # DLRM never switches to eval mode for its test passes, so a lookup is
        # only counted once the optimizer step that follows it has happened.
        indices = inputs[2]
        for i in self.sizes:
            self.pending[i] = indices[self.global_index[i]].reshape(-1)

    def _commit_counts(self):
        # Counted where the indices arrive, not where the table lives: under --use-gpu
        # with one GPU both are the GPU, but with several DLRM's parallel_forward moves
        # each table's indices to its device only after this hook has seen them on the CPU.
        for i, indices in self.pending.items():
            counts = self.counts.get(i)
            if counts is None or counts.device != indices.device:
                counts = torch.zeros(self.sizes[i], dtype=torch.int32, device=indices.device) \
                    if counts is None else counts.to(indices.device)
            self.counts[i] = counts.index_add_(0, indices, torch.ones_like(indices, dtype=torch.int32))
        self.pending.clear()

    def after_step(self, model: nn.Module, writer: "SummaryWriter", step: Optional[int] = None) -> None:
        """Called after each optimizer step; logs every ``freq`` steps."""
        if model is not self.model:
            self.attach(model)
        self._commit_counts()
        self.steps += 1
        step = self.steps if step is None else step
        if self.freq <= 0 or step % self.freq:
            return
        with torch.no_grad():
            self.log(model, writer, step)

    def log(self, model: nn.Module, writer: "SummaryWriter", step: int) -> None:
        ranks = []
        emb_l = cast(nn.ModuleList, model.emb_l)  # DLRM_Net's tables
        for i in _logged(model):
            table, name = emb_l[i], f"emb_l.{i}"
            a, b = _factors(table)
            n = a.shape[0]
            rows = None if n <= self.sample_rows else torch.randperm(n, generator=self.generator)[: self.sample_rows]
            values = singular_values(a, b, rows)
            ranks.append(effective_rank(values))
            writer.add_scalar(f"MLET/effective_rank/{name}", ranks[-1], step)
            for j, value in enumerate(values[:TOP_SINGULAR].tolist()):
                writer.add_scalar(f"MLET/singular_value_{j}/{name}", value, step)
            if b is not None:
                writer.add_scalar(f"MLET/proj_norm/{name}", float(b.detach().norm()), step)
            if i in self.counts:
                self._log_updates(i, table, writer, step)
        if ranks:
            writer.add_scalar("MLET/effective_rank/mean", sum(ranks) / len(ranks), step)

    def _log_updates(self, i, table, writer, step):
        name = f"emb_l.{i}"
        if i in self.snapshots:
            for group, (rows, before) in self.snapshots[i].items():
                if len(rows):
                    change = (_folded_rows(table, rows) - before).norm(dim=1).mean()
                    writer.add_scalar(f"MLET/update_{group}/{name}", float(change), step)
        counts = self.counts[i]
        frequent = torch.topk(counts, min(ROWS_PER_GROUP, len(counts))).indices
        frequent = frequent[counts[frequent] > 2]
        rare = ((counts >= 1) & (counts <= 2)).nonzero().flatten()
        rare = rare[torch.randperm(len(rare), generator=self.generator)[:ROWS_PER_GROUP]]
        self.snapshots[i] = {
            group: (rows, _folded_rows(table, rows)) for group, rows in (("frequent", frequent), ("rare", rare))
        }
