"""Half-precision tables' update at the step, for a group packed in one buffer: one pass, not one per table.

``core/half.py`` updates each half table alone: coalesce its rows, apply the
optimizer's rule in float32, then (batched over the tables) round
stochastically and write each table's rows back: about six small ops per
table, 26 tables a step in DLRM. When a backward's tables lie in one buffer
(``packing.py``) and one param group holds them all, this does the same on
the buffer at once: one unique-and-sum over all rows, the rule on all of them
(the accumulators aligned in one float32 buffer, each table's state a view
of it, stored as ``half.py`` stores them), one rounding, one write.

The result is ``half.py``'s, bit for bit: the same elementwise arithmetic,
and the rounding noise drawn from the same generator for the same rows in
the same order (table by table in buffer order, each table's rows sorted),
which for DLRM's tables, packed in the order the optimizer holds them, is
``half.py``'s order. Anything else (several backwards before a step, tables
held apart, steps counted apart) goes to ``half.apply_rows``.
"""

from typing import Sequence

import torch

from ..core import half, step
from ..core.rounding import stochastic_round
from ..core.step import ParamGroup, Payloads
from .packing import Packed, PerTable, aligned_state, summed_rows


class _Call:
    """One backward's group of half tables: what its deferred entries share."""

    def __init__(self, tables, indices, rows, packed):
        self.tables, self.indices, self.rows, self.packed = tables, indices, rows, packed


def add_group(tables: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], rows: PerTable,
              packed: Packed = None) -> None:
    """Record a grouped backward's gradient rows of half tables for the next step holding them."""
    call = _Call(tables, indices, rows, packed)
    for j, table in enumerate(tables):
        step.defer(table, apply, (call, j), indices[j].numel())


def apply(optimizer: torch.optim.Optimizer, group: ParamGroup, payloads: Payloads) -> None:
    """Every half-table entry of ``group`` at this step (one call: ``apply`` is shared by all)."""
    calls = {id(call): call for _, (call, _) in payloads}
    if len(calls) == 1:
        call = next(iter(calls.values()))
        if call.packed is not None and len(payloads) == len(call.tables) and _packed(optimizer, group, call):
            return
    half.apply_rows(optimizer, group, [(table, (call.indices[j], call.rows[j].float()))
                                       for table, (call, j) in payloads])


def _packed(optimizer, group, call):
    """The packed update; False (nothing done) when the tables' rule or step count differ."""
    tables = call.tables
    found = {half.rule_of(optimizer, group, t) for t in tables}
    if len(found) != 1:
        return False
    rule = found.pop()
    states = [optimizer.state[t] for t in tables]
    if len({float(s.get("step", 0)) for s in states}) != 1:
        return False
    buffer, flat = call.packed
    unique, grad = summed_rows(flat, call.rows, torch.float32)
    total = None
    if rule.half_key is not None:
        if not rule.row_wise:
            for state in states:  # the optimizer's own accumulator in the table's dtype: never used for it
                state.pop(rule.state_key, None)
        total = aligned_state(optimizer, tables, buffer, rule.half_key, rule.row_wise,
                              optimizer.defaults.get("initial_accumulator_value", 0.0), stored_as=buffer.dtype)
    values = half.step_values(rule, buffer, unique, grad, states, group, optimizer.defaults, total)
    generator = half.generator_of(tables[0], states[0])
    buffer.index_copy_(0, unique, stochastic_round(values, buffer.dtype, generator))
    states[0]["mlet_rng"] = generator.get_state().view(buffer.dtype)
    return True
