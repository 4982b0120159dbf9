"""Adagrad and DLRM's row-wise Adagrad on MLET tables at the optimizer's step, without gradient tensors.

With sparse gradients, ``torch.optim.Adagrad`` (and DLRM's ``RWSAdagrad``)
update each of DLRM's 26 k-wide tables alone: coalesce its sparse gradient,
add the squares to its accumulator, gather, divide, scatter: a handful of
small ops per table per step. Here backward hands a group's gradient rows to
the optimizer's next step (``core/step.py``), which applies the same rule to
the whole group at once when the tables lie in one buffer (``packing.py``):
one unique-and-sum of the rows, one gather of the accumulator rows, one
update of them and one of the table rows. The accumulators stay where the
optimizer keeps them (``state[table]["sum"]``, or ``["momentum"]`` per row
for ``RWSAdagrad``), so checkpoints, resume and folding see the same state
dict; they are moved into one buffer aligned with the tables' (each table's
state a view of it) the first time, and again whenever something replaced
them (``load_state_dict``). With Adagrad, projections packed back to back
(DLRM's) are updated the same way, all at once by Adagrad's dense rule, their
sums in one buffer (``add_projections``): torch's Adagrad would step the 26
of them one by one. Otherwise they keep their dense gradients, which the
optimizer applies itself.

The math is the optimizer's own on a sparse gradient: rows of a table that
repeat in a step are summed before the update (as ``coalesce`` does), the
step count is kept in the same state, and ``lr_decay``, ``eps`` and the
initial accumulator are honoured; only the order of float sums differs.
Weight decay and ``maximize`` are refused, as torch refuses them with sparse
gradients.
"""

from typing import Sequence

import torch

from ..core import rules, step
from .packing import Packed, PerTable, aligned_state, stacked, summed_rows


def add_group(tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], rows: PerTable, rule: str,
              packed: Packed = None) -> None:
    """Record one grouped backward's table rows for ``rule``'s update at the next step."""
    applied = rules.named(rule)

    def apply(optimizer, group, payloads):
        applied.refuse(optimizer, group, "these MLET tables")
        held = [j for _, j in payloads]
        lrs = _steps(optimizer, group, applied, [tables[j] for j in held])
        eps = applied.eps(group, optimizer.defaults)
        if packed is not None and len(held) == len(tables) and len(set(lrs)) == 1:
            buffer, flat = packed
            total = aligned_state(optimizer, tables, buffer, applied.state_key, applied.row_wise)
            unique, grad = summed_rows(flat, rows)
            applied.apply(buffer, total, unique, grad, lrs[0], eps)
        else:  # some tables held elsewhere, or stepped apart under lr_decay: each alone, at its own rate
            for j, lr in zip(held, lrs):
                unique, grad = summed_rows(indices[j], rows[j])
                applied.apply(tables[j].data, optimizer.state[tables[j]][applied.state_key], unique, grad, lr, eps)

    for j, table in enumerate(tables):
        step.defer(table, apply, j, indices[j].numel())


def add_projections(projections: Sequence[torch.Tensor], gradients: PerTable, packed: torch.Tensor) -> None:
    """Record one grouped backward's projection gradients (``gradients[p]`` for ``projections[p]``) for
    Adagrad at the next step: one update over ``packed`` (their stacked view) when one group holds them all
    and they step together, else each at its own rate. Torch's dense rule, unchanged.
    """
    rule = rules.ADAGRAD

    def apply(optimizer, group, payloads):
        rule.refuse(optimizer, group, "these MLET tables")
        held = [j for _, j in payloads]
        lrs = _steps(optimizer, group, rule, [projections[j] for j in held])
        eps = rule.eps(group, optimizer.defaults)
        if len(held) == len(projections) and len(set(lrs)) == 1:
            _dense(packed, _packed_sums(optimizer, projections), gradients, lrs[0], eps)
        else:
            for j, lr in zip(held, lrs):
                _dense(projections[j], optimizer.state[projections[j]]["sum"], gradients[j], lr, eps)

    for j, projection in enumerate(projections):
        step.defer(projection, apply, j)


def _dense(weight, total, grad, lr, eps):
    """``torch.optim.Adagrad``'s rule for a dense gradient."""
    total.addcmul_(grad, grad, value=1)
    weight.addcdiv_(grad, total.sqrt().add_(eps), value=-lr)


def _packed_sums(optimizer, projections):
    """The projections' Adagrad sums as one tensor, each projection's sum a view of it (made so once)."""
    sums = [optimizer.state[p]["sum"] for p in projections]
    whole = stacked(sums)
    if whole.untyped_storage().data_ptr() != sums[0].untyped_storage().data_ptr():  # a copy: align them
        for p, view in zip(projections, whole):
            optimizer.state[p]["sum"] = view
    return whole


def _steps(optimizer, group, rule, tables):
    """Count the step in each table's state (as the optimizer does); the lr this step takes."""
    lrs = []
    for table in tables:
        state = optimizer.state[table]
        if rule.row_wise and rule.state_key not in state:  # RWSAdagrad makes it at its first step
            state[rule.state_key] = table.new_full((table.shape[0],), optimizer.defaults["initial_accumulator_value"])
        lrs.append(rule.lr(group, optimizer.defaults, rule.count(state)))
    return lrs
