"""Many k-wide tables in one buffer, as fbgemm's table-batched embeddings keep them.

A DLRM step gathers rows from its 26 tables and updates them again: 26
small ops each, which on a few CPU cores cost per-op overhead and run on one
thread. When the tables' weights are row blocks of one storage, the grouped
engine does each with one op over the whole buffer (one gather of 26 x 128
rows, one sparse add): one op instead of 26 is what a few CPU cores need
(timings: ``benchmarks/RESULTS.md``).

Nothing else sees a difference: each table keeps its own ``Parameter`` (a
view of the buffer), so state dicts, optimizers, checkpoints and folding are
unchanged. Packing is not a registered property but a fact about storage,
read at every step (``flat_indices``): whatever replaces a weight (``.to()`` to
another device, ``load_state_dict(assign=True)``) just unpacks it, and the
engine goes back to one op per table.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch

# A group's tables in one buffer, ``flat_indices``' ``(buffer, flat)``; None when they are not packed.
Packed = Optional[Tuple[torch.Tensor, torch.Tensor]]
# One tensor per table of a group, as a list or a tuple: what ``torch.cat`` and ``torch.stack`` take.
Tensors = Union[List[torch.Tensor], Tuple[torch.Tensor, ...]]
# A group's per-table tensors (gradient rows, projection gradients): one per table, or stacked over tables.
PerTable = Union[torch.Tensor, Sequence[torch.Tensor]]


class Buffer:
    """Rows for tables built one after another, their total known first.

    Allocating the buffer before the tables, and moving each in as it is
    built (``place``), bounds the extra memory to one table rather than a
    second copy of them all.
    """

    def __init__(self, rows: int, width: int, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> None:
        self.rows = torch.empty(rows, width, dtype=dtype, device=device)
        self.used = 0

    def place(self, weight: torch.Tensor) -> None:
        """Move ``weight`` (a 2-D parameter of this width and dtype) into the next free rows."""
        n = weight.shape[0]
        if self.used + n > self.rows.shape[0] or weight.shape[1:] != self.rows.shape[1:]:
            raise ValueError(f"a {tuple(weight.shape)} table does not fit the packing buffer's "
                             f"{self.rows.shape[0] - self.used} free rows of width {self.rows.shape[1]}")
        view = self.rows[self.used:self.used + n]
        with torch.no_grad():
            view.copy_(weight)
        weight.data = view  # the same Parameter object: optimizers and modules keep their references
        self.used += n


def flat_indices(weights: Tensors, indices: Tensors) -> Packed:
    """``(buffer, flat)`` when every weight is a block of rows of one storage, else None.

    ``buffer`` is that storage as one ``(rows, k)`` tensor and ``flat`` the
    concatenated ``indices`` (``indices[t]`` are rows of ``weights[t]``) as
    rows of it. The weights share dtype and width (the grouped engine groups
    them so); repeats are allowed. An index outside its own table raises
    ``IndexError``, as ``nn.EmbeddingBag`` does: in the buffer it would read a
    neighbour's row without a word.
    """
    first = weights[0]
    width, size = first.shape[1], first.element_size()
    base = first.data_ptr() - first.storage_offset() * size
    starts, rows = [], []
    for w in weights:
        offset = w.storage_offset()
        if w.stride() != (width, 1) or offset % width or w.data_ptr() - offset * size != base:
            return None
        starts.append(offset // width)
        rows.append(w.shape[0])
    device = first.device
    counts = [i.numel() for i in indices]
    table_rows, first_rows = torch.tensor([rows, starts], device=device)
    if counts.count(counts[0]) == len(counts):  # the usual case (one index per bag, or a fixed count)
        local = torch.stack(indices)
        table_rows, first_rows = table_rows[:, None], first_rows[:, None]
    else:
        repeats = torch.tensor(counts, device=device)
        local = torch.cat(indices)
        table_rows, first_rows = table_rows.repeat_interleave(repeats), first_rows.repeat_interleave(repeats)
    if local.numel() and not bool(((local >= 0) & (local < table_rows)).all()):
        raise IndexError(_out_of_range(indices, rows))
    storage = first.untyped_storage()
    # The ignores on set_ in this module: torch's stub of it omits its stride's default (contiguous).
    buffer = torch.empty(0, dtype=first.dtype, device=device).set_(  # type: ignore[call-overload]
        storage, 0, (storage.nbytes() // (width * size), width))
    return buffer, (local + first_rows).flatten()


def stacked(weights: Tensors) -> torch.Tensor:
    """The same-shaped weights as one ``(count, *shape)`` tensor, without a copy when they can be.

    A view when they lie back to back in one storage, in order (as a
    ``Buffer`` placed them), else ``torch.stack``. The view is plain (no
    autograd link): callers take it under ``no_grad`` and treat it as data.
    """
    first = weights[0]
    step = first.numel() * first.element_size()
    for j, w in enumerate(weights):
        if w.shape != first.shape or not w.is_contiguous() or w.data_ptr() != first.data_ptr() + j * step:
            return torch.stack(weights)
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(  # type: ignore[call-overload]
        first.untyped_storage(), first.storage_offset(), (len(weights), *first.shape))


def summed_rows(flat: torch.Tensor, rows: PerTable,
                dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unique buffer rows and their summed gradient rows: what ``coalesce`` makes of a sparse gradient.

    ``rows``: the gradient rows in ``flat``'s order, as one tensor (2-D, or
    stacked per table) or a list of one per table; summed in ``dtype``
    (default theirs: half tables' updates sum in float32).
    """
    rows = rows.reshape(-1, rows.shape[-1]) if torch.is_tensor(rows) else torch.cat(list(rows))
    unique, inverse = torch.unique(flat, return_inverse=True)
    dtype = dtype or rows.dtype
    return unique, torch.zeros(unique.numel(), rows.shape[1], dtype=dtype, device=rows.device).index_add_(
        0, inverse, rows.to(dtype))


def state_over(states: Sequence[torch.Tensor], tables: Sequence[torch.Tensor], buffer: torch.Tensor,
               row_wise: bool) -> Optional[torch.Tensor]:
    """Per-table optimizer states as one tensor over ``buffer``'s rows, without a copy; None when they are not.

    They are when each table's state is a contiguous view of one storage at
    that table's rows of the buffer (one value per row when ``row_wise``),
    as the packed updates leave them the first time they align them.
    """
    width = 1 if row_wise else buffer.shape[1]
    first = states[0]
    size = first.element_size()
    base = first.data_ptr() - first.storage_offset() * size
    for state, table in zip(states, tables):
        if not state.is_contiguous() or state.data_ptr() - state.storage_offset() * size != base or \
                state.storage_offset() != table.storage_offset() // buffer.shape[1] * width:
            return None
    if first.untyped_storage().nbytes() != buffer.shape[0] * width * size:
        return None
    shape = (buffer.shape[0],) if row_wise else tuple(buffer.shape)
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(  # type: ignore[call-overload]
        first.untyped_storage(), 0, shape)


def aligned_state(optimizer: torch.optim.Optimizer, tables: Sequence[torch.Tensor], buffer: torch.Tensor, key: str,
                  row_wise: bool, initial: float = 0.0, stored_as: Optional[torch.dtype] = None) -> torch.Tensor:
    """The tables' accumulators (``optimizer.state[table][key]``) as one float32 tensor aligned with their
    packed ``buffer``, each table's state a view of it: made so the first time (and again whenever
    something replaced them: ``load_state_dict``), found in place after. A state kept as bytes in another
    dtype (``stored_as``: a half table's, ``core/half.py``) is read and stored so; a missing one starts
    at ``initial``.
    """
    stored = [optimizer.state[t].get(key) for t in tables]
    as32 = (lambda x: x.view(torch.float32)) if stored_as is not None else (lambda x: x)
    if all(x is not None for x in stored):
        whole = state_over([as32(x) for x in stored], tables, buffer, row_wise)
        if whole is not None:
            return whole
    shape = (buffer.shape[0],) if row_wise else tuple(buffer.shape)
    whole = torch.full(shape, float(initial), dtype=torch.float32, device=buffer.device)
    for table, old in zip(tables, stored):
        start = table.storage_offset() // buffer.shape[1]
        view = whole[start:start + table.shape[0]]
        if old is not None:
            view.copy_(as32(old))
        optimizer.state[table][key] = view if stored_as is None else view.view(stored_as)
    return whole


def _out_of_range(indices, rows):
    for t, (i, n) in enumerate(zip(indices, rows)):
        bad = i[(i < 0) | (i >= n)]
        if bad.numel():
            return f"index {int(bad[0])} is out of range for table {t} of the group ({n} rows)"
    return "index out of range"


def project(pooled: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Each table's pooled rows through its projection, all tables in one product:
    ``(tables, bags, k)`` and ``(tables, d, k)`` give ``(tables, bags, d)``."""
    return torch.bmm(pooled, projections.transpose(1, 2))


def projection_grad(grad_out: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The projections' gradient of ``project``, all tables in one product: ``(tables, d, k)``."""
    return torch.bmm(grad_out.transpose(1, 2), pooled)
