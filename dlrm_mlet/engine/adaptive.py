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

import torch

from ..core import step
from ..errors import MLETError
from .packing import stacked, state_over, summed_rows

RULES = ("adagrad", "rwsadagrad")


def _optimizer_class(rule):
    return "Adagrad" if rule == "adagrad" else "RWSAdagrad"


def check(rule):
    """The optimizer check ``step.require`` holds a table to: the optimizer the rule is."""
    def check_optimizer(optimizer, group, param=None):
        if type(optimizer).__name__ != _optimizer_class(rule) or group.get("weight_decay") or \
                group.get("maximize"):
            raise MLETError(f"these MLET tables are updated at the step by {_optimizer_class(rule)}'s rule (DLRM's "
                            f"--optimizer={rule}); this optimizer is {type(optimizer).__name__}"
                            + (" with weight decay or maximize" if type(optimizer).__name__ == _optimizer_class(rule)
                               else ""))
    return check_optimizer


def add_group(tables, indices, rows, rule, packed=None):
    """Record one grouped backward's table rows for ``rule``'s update at the next step."""

    def apply(optimizer, group, payloads):
        check(rule)(optimizer, group)
        held = [j for _, j in payloads]
        lrs = _steps(optimizer, group, rule, [tables[j] for j in held])
        if packed is not None and len(held) == len(tables) and len(set(lrs)) == 1:
            _packed_update(optimizer, group, rule, tables, rows, packed, lrs[0])
        else:  # some tables held elsewhere, or stepped apart under lr_decay: each alone, at its own rate
            for j, lr in zip(held, lrs):
                _table_update(optimizer, group, rule, tables[j], indices[j], rows[j], lr)

    for j, table in enumerate(tables):
        step.defer(table, apply, j, indices[j].numel())


def add_projections(projections, gradients, packed):
    """Record one grouped backward's projection gradients (``gradients[p]`` for ``projections[p]``) for
    Adagrad at the next step: one update over ``packed`` (their stacked view) when one group holds them all
    and they step together, else each at its own rate. Torch's dense rule, unchanged.
    """

    def apply(optimizer, group, payloads):
        check("adagrad")(optimizer, group)
        held = [j for _, j in payloads]
        lrs = _steps(optimizer, group, "adagrad", [projections[j] for j in held])
        if len(held) == len(projections) and len(set(lrs)) == 1:
            _dense(packed, _packed_sums(optimizer, projections), gradients, lrs[0], group["eps"])
        else:
            for j, lr in zip(held, lrs):
                _dense(projections[j], optimizer.state[projections[j]]["sum"], gradients[j], lr, group["eps"])

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
    counts = []
    for table in tables:
        state = optimizer.state[table]
        if rule == "adagrad":
            state["step"].add_(1)
            counts.append(float(state["step"]))
        else:
            state["step"] = state.get("step", 0) + 1
            if "momentum" not in state:  # RWSAdagrad makes it at its first step, for parameters with a gradient
                state["momentum"] = torch.full([table.shape[0]], optimizer.defaults["initial_accumulator_value"],
                                               dtype=torch.float32, device=table.device)
            counts.append(state["step"])
    return [group["lr"] / (1.0 + (n - 1.0) * group["lr_decay"]) for n in counts]


def _apply(weight, accumulator, unique, grad, rule, lr, eps):
    """The rule on the unique rows of one weight (a table, or the packed buffer) and its accumulator."""
    squares = grad * grad if rule == "adagrad" else (grad * grad).mean(dim=1)
    accumulator.index_add_(0, unique, squares)  # rows are unique: one add each, in place
    std = accumulator.index_select(0, unique).sqrt_().add_(eps)
    # ``grad`` is this update's own sum (summed_rows): divided in place, one pass fewer
    weight.index_add_(0, unique, grad.div_(std if rule == "adagrad" else std.unsqueeze(1)), alpha=-lr)


def _table_update(optimizer, group, rule, table, indices, rows, lr):
    unique, grad = summed_rows(indices, rows)
    key = "sum" if rule == "adagrad" else "momentum"
    _apply(table.data, optimizer.state[table][key], unique, grad, rule, lr, group["eps"])


def _packed_update(optimizer, group, rule, tables, rows, packed, lr):
    buffer, flat = packed
    key = "sum" if rule == "adagrad" else "momentum"
    accumulator = _packed_state(optimizer, tables, key, buffer)
    unique, grad = summed_rows(flat, rows)
    _apply(buffer, accumulator, unique, grad, rule, lr, group["eps"])


def _packed_state(optimizer, tables, key, buffer):
    """The tables' accumulators as one tensor aligned with their packed buffer (made so once)."""
    states = [optimizer.state[t][key] for t in tables]
    row_wise = states[0].dim() == 1
    whole = state_over(states, tables, buffer, row_wise)
    if whole is not None:
        return whole
    first = states[0]
    starts = [t.storage_offset() // buffer.shape[1] for t in tables]
    shape = (buffer.shape[0],) if row_wise else tuple(buffer.shape)
    whole = torch.zeros(shape, dtype=first.dtype, device=first.device)
    for t, state, start in zip(tables, states, starts):
        view = whole[start:start + t.shape[0]]
        view.copy_(state)
        optimizer.state[t][key] = view
    return whole

