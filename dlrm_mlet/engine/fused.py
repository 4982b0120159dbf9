"""SGD on MLET tables and projections without gradient tensors (``--mlet-fused-update``).

With sparse gradients each MLET table's gradient is a sparse tensor that
autograd accumulates and SGD then adds to the table, and each projection's a
dense one: bookkeeping for 52 parameters a step in DLRM. fbgemm's
table-batched embeddings avoid it by updating rows inside backward. We do the
same with less machinery: backward hands a group's gradient rows and
projection gradients to ``add_group``, and the next ``step()`` of the
optimizer that holds them applies them at that step's learning rate (so
DLRM's scheduler is honoured): for tables packed in one buffer
(``packing.py``) one sparse add and one dense add for the whole group. It is
patched DLRM's default with ``--optimizer=sgd``, chosen by whole-run timings
(``benchmarks/whole_run.py``; the figures are in ``benchmarks/RESULTS.md``).

``use(tables, "fbgemm")`` (``--mlet-fused-update=fbgemm``) hands the same step
to fbgemm's table-batched embedding instead (``tbe.py``): it pools the k-wide
rows and applies the update in its own fused kernels, as TorchRec does.

Either way the math is plain SGD applied at the same point of the iteration
as with sparse gradients, at the learning rate of the optimizer group that
holds each parameter, so loss curves match that path to float tolerance
(only the summation order of repeated rows differs). Momentum and weight decay
need the gradient itself, so they are refused, not approximated; Adagrad and
row-wise Adagrad have their own update at the step (``adaptive.py``).

The choice belongs to each table (``use`` sets it, the grouped engine reads
it): two models, one fused and one not, train side by side in one process.
The update waits in ``core/step.py`` for the step of the optimizer holding
the table, and ``use`` declares there that it needs plain SGD, so
``step.attach(optimizer)`` refuses any other optimizer before training.
"""

from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ..core import rules, step
from ..core.bag import MLETEmbeddingBag
from ..core.pair import Update
from ..errors import MLETError
from .packing import Packed, PerTable

BACKENDS = ("torch", "fbgemm")


def use(tables: Union[nn.Module, Iterable[nn.Module]], backend: Optional[str] = "torch", rule: str = "sgd") -> int:
    """Set how the MLET tables in ``tables`` (a module, or a list of modules) are updated.

    ``"torch"`` or ``"fbgemm"``: rows go to the next optimizer step; None: sparse
    gradients, the default. ``rule``: the optimizer whose rule the step applies,
    ``"sgd"`` (tables and projections) or ``"adagrad"`` / ``"rwsadagrad"``
    (the tables, and Adagrad's packed projections: ``adaptive.py``; the other
    projections keep their gradients);
    fbgemm's is SGD. Other modules are left alone. Returns how many tables were set.
    """
    if backend is not None and backend not in BACKENDS:
        raise MLETError(f"fused update backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    applied = rules.RULES.get(rule)
    if applied is None or backend == "fbgemm" and applied is not rules.SGD:  # fbgemm's TBE applies SGD only
        raise MLETError(f"the update at the step applies "
                        f"{'sgd with fbgemm' if backend == 'fbgemm' else ', '.join(rules.RULES)}, not {rule!r}")
    count = 0
    check = applied.checker(f"these MLET tables (--mlet-fused-update applies plain {applied.optimizer} steps)")
    for table in _modules(tables):
        if isinstance(table, MLETEmbeddingBag):
            table.set_update(Update(backend, rule))
            step.require(table.table.weight, None if backend is None else check)
            step.require(table.proj.weight, None if backend is None or not applied.dense_at_step else check)
            count += 1
    return count


def add_group(tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], rows: PerTable,
              projections: Sequence[torch.Tensor] = (), gradients: PerTable = (), packed: Packed = None,
              stacked: Optional[torch.Tensor] = None) -> None:
    """Record one grouped backward's SGD update for the next step of the optimizer holding it.

    ``tables[t]`` (float32) gets ``rows[t]`` at ``indices[t]`` (repeats add
    up; ``rows`` a list, or one ``(tables, n, k)`` tensor when each table
    has n), ``projections[p]`` gets ``gradients[p]``. When one param group of
    the stepping optimizer holds all the tables (DLRM's single group, or the
    tables' own group) they are applied together: one sparse add over the
    tables' shared buffer when they are packed (``packed``:
    ``packing.flat_indices`` of them), else one per table; the projections
    a group holds in one add (``stacked``: their ``packing.stacked`` view,
    when it holds them all and they are packed), else a foreach add. Each
    group applies what it holds when its optimizer steps, at its lr: the
    same result however the parameters are grouped.
    """
    params = list(tables) + list(projections)

    def apply(optimizer, group, payloads):
        lr = group["lr"]
        held = {j for _, j in payloads}
        # The tables together when this group holds them all (DLRM's single group, or a
        # group of its own: --mlet-table-lr-scale), else each alone at this group's lr.
        if tables and held.issuperset(range(len(tables))):
            if packed is None:
                for table, i, r in zip(tables, indices, rows):
                    _sparse_add(table, i, r, lr)
            else:
                buffer, flat = packed
                _sparse_add(buffer, flat, rows.flatten(0, 1) if torch.is_tensor(rows) else torch.cat(rows), lr)
        else:
            for j in sorted(held & set(range(len(tables)))):
                _sparse_add(tables[j], indices[j], rows[j], lr)
        mine = [j - len(tables) for j in sorted(held) if j >= len(tables)]
        if len(mine) == len(projections) and stacked is not None:
            stacked.add_(gradients, alpha=-lr)
        elif mine:
            torch._foreach_add_([projections[p] for p in mine], [gradients[p] for p in mine], alpha=-lr)

    for j, param in enumerate(params):
        step.defer(param, apply, j, indices[j].numel() if j < len(tables) else 0)


def _sparse_add(weight, indices, rows, lr):
    """``weight[indices] -= lr * rows``, repeated indices adding up.

    As a dense += sparse add, which torch runs on all threads (``index_add_``
    runs on one).
    """
    weight.add_(torch.sparse_coo_tensor(indices.unsqueeze(0), rows.to(weight.dtype), weight.shape,
                                        check_invariants=False), alpha=-lr)


# What fbgemm's TBE step (tbe.py) holds its optimizer to: plain SGD, the only rule it applies.
check_plain_sgd = rules.SGD.checker("these MLET tables (--mlet-fused-update applies plain SGD steps)")


def pending_rows(tables: Union[nn.Module, Iterable[nn.Module]]) -> int:
    """How many gradient rows of ``tables`` (a module, or a list of modules) wait for a step."""
    return step.pending([tables] if isinstance(tables, nn.Module) else tables)


def _modules(tables):
    return tables.modules() if isinstance(tables, nn.Module) else (m for t in tables for m in t.modules())
