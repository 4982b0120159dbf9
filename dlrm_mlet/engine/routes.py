"""Where a group's gradients go: one ``Route`` per way, resolved once from what the tables declare.

A table declares its update (``core/pair.Update``: sparse gradients, or an
optimizer's rule applied at the step by torch or by fbgemm) and its dtype adds
one fact (half tables always take ``half.py``'s rule at the step). Their
combinations (sparse or at-step tables, times dense or at-step projections,
times float32 or half rows) are resolved here once per table (``route_of``,
also the grouping key), so that backward makes one call, ``Route.backward``,
which hands each gradient to the update that applies it and returns what
autograd still has to carry; a new way to update is one more route.
"""

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..core import half, rules
from ..core.pair import TwoLayer, Update
from . import adaptive, fused, half_update
from .packing import Packed, PerTable


@dataclass(frozen=True)
class Route:
    """``tables``: "sparse" (sparse gradients for the optimizer), "half" (``half_update``), a rule's name
    ("sgd": ``fused``; "adagrad", "rwsadagrad": ``adaptive``) or "fbgemm" (``tbe``, which applies the
    step for tables and projections). ``projections``: "dense" (their gradients), "sgd" (``fused``) or
    "adagrad" (``adaptive``, when they are packed; dense otherwise)."""

    tables: str
    projections: str

    @property
    def halved(self) -> bool:
        return self.tables == "half"

    def backward(self, tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], rows: PerTable,
                 packed: Packed, projs: Sequence[torch.Tensor], grad_proj: torch.Tensor,
                 stacked: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """Hand one grouped backward's gradients on; the gradients autograd returns (tables, then projections).

        ``rows[t]``: table t's gradient rows, one per index; ``grad_proj``: the projections' stacked
        gradient; ``stacked``: the projections' packed view, None when they are not packed.
        """
        count = len(tables)
        grads: List[Optional[torch.Tensor]] = [None] * (2 * count)
        if self.tables == "sparse":
            grads[:count] = [torch.sparse_coo_tensor(i.unsqueeze(0), rows[t], table.shape, check_invariants=False)
                             for t, (i, table) in enumerate(zip(indices, tables))]
        elif self.tables == "half":
            half_update.add_group(tables, indices, rows, packed)
        elif self.tables != "sgd":  # sgd's rows go with the projections below, in one deferred update
            adaptive.add_group(tables, indices, rows, self.tables, packed=packed)
        if self.projections == "sgd":
            fused.add_group(tables if self.tables == "sgd" else (), indices, rows, projs, grad_proj,
                            packed=packed, stacked=stacked)
        elif self.projections == "adagrad" and stacked is not None:
            adaptive.add_projections(projs, grad_proj, stacked)
        else:
            grads[count:] = grad_proj.unbind(0)
        return grads


def route_of(table: TwoLayer) -> Route:
    """The route of an MLET table's gradients, from its declared update and its table's dtype."""
    return _route(table.update, half.is_half(table.table.weight))


@functools.lru_cache(maxsize=None)  # asked for every table at every forward; a handful of answers
def _route(update: Update, halved: bool) -> Route:
    if update.backend == "fbgemm":
        return Route("fbgemm", "fbgemm")
    if update.backend is None:
        return Route("half" if halved else "sparse", "dense")
    projections = update.rule if rules.named(update.rule).dense_at_step else "dense"
    return Route("half" if halved else update.rule, projections)
