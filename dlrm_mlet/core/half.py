"""Half-precision k-wide tables (``--mlet-table-dtype fp16|bf16``), updated with stochastic rounding.

MLET's training price is the ``n x k`` tables. Storing them in fp16 or bf16
halves it; everything else (the projection, the pooled activations' math,
the optimizer's accumulators and the folded table) stays float32.

Why the tables get their own update path: torch's optimizers round each
update to the nearest half value, and an update smaller than half a step of
the row's precision (common for rare rows, late in training, with Adagrad's
shrinking steps) is dropped, so those rows silently stop learning.
Stochastic rounding rounds up or down with probabilities that make the
stored value right on average, as fbgemm's CUDA kernels do for their fp16
tables (its CPU kernels round to nearest: ``torchrec/collection.py`` warns). So the
rows of a half table are gathered as float32 (``HalfRows``), their gradient
rows wait for the optimizer's step (``step.defer``), and the next step of the optimizer that holds the table applies that
optimizer's rule (SGD, Adagrad, DLRM's row-wise RWSAdagrad) in float32 to
the touched rows and rounds the result stochastically (``rounding.py``).

The optimizer state of a half table lives in the optimizer's own state dict,
so DLRM's checkpoint carries it and a resumed run continues exactly: the
float32 accumulators under ``mlet_sum`` / ``mlet_momentum``, the rounding
generator's state under ``mlet_rng``. Each is stored as its raw bytes viewed
in the table's own dtype (a float32 ``(n,)`` accumulator is an fp16 ``(2n,)``
tensor), because ``Optimizer.load_state_dict`` casts every state tensor but
``step`` to its parameter's dtype, which would round the accumulators (and
break the generator's bytes) on every resume; a cast to the dtype a tensor
already has changes nothing. ``float32_state`` reads them back.
"""

import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch

from ..errors import MLETError
from . import rules, step
from .options import TABLE_DTYPE_REGISTRY
from .rounding import stochastic_round
from .step import ParamGroup, ParamState, Payloads

TABLE_DTYPES = {name: getattr(torch, entry[1]) for name, entry in TABLE_DTYPE_REGISTRY.items()}
HALF = tuple(dtype for dtype in TABLE_DTYPES.values() if dtype.itemsize < 4)
TableDtype = Union[str, torch.dtype, None]  # a table's storage: a name ("fp16"), a torch dtype, None: float32
_Recorded = List[Tuple[torch.Tensor, torch.Tensor]]  # a half table's recorded (indices, gradient rows)


def table_dtype(value: TableDtype) -> torch.dtype:
    """A table dtype given as a name (``"fp16"``), a floating torch dtype or None (float32)."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise MLETError(f"table dtype must be a floating-point dtype, got {value}")
        return value
    name = str(value).strip().lower()
    if name not in TABLE_DTYPES:
        raise MLETError(f"table dtype must be one of {', '.join(TABLE_DTYPES)}, got {value!r}")
    return TABLE_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16 -> "fp16"`` (the names the options take)."""
    return next(name for name, value in TABLE_DTYPES.items() if value == dtype)


def is_half(tensor: torch.Tensor) -> bool:
    return tensor.dtype in HALF


# --- the forward: rows gathered as float32 ------------------------------------

class HalfRows(torch.autograd.Function):
    """``weight[indices]`` as float32; the gradient rows go to the table's next step (``add``).

    Rows equal to ``padding_idx`` get no update, as in ``nn.Embedding``.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, indices: torch.Tensor,
                padding_idx: Optional[int] = None) -> torch.Tensor:
        ctx.weight, ctx.padding_idx = weight, padding_idx
        ctx.save_for_backward(indices)
        return weight.index_select(0, indices).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[None, None, None]:
        if ctx.needs_input_grad[0]:
            (indices,) = ctx.saved_tensors
            if ctx.padding_idx is not None:
                keep = indices != ctx.padding_idx
                indices, grad = indices[keep], grad[keep]
            add(ctx.weight, indices, grad)
        return None, None, None


def lookup(weight: torch.Tensor, input: torch.Tensor, padding_idx: Optional[int] = None) -> torch.Tensor:
    """``nn.Embedding``'s lookup of a half table: ``(*input.shape, k)`` float32 rows."""
    rows = HalfRows.apply(weight, input.reshape(-1), padding_idx)
    return rows.view(*input.shape, weight.shape[1])


def pool(weight: torch.Tensor, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
         per_sample_weights: Optional[torch.Tensor] = None, mode: str = "sum", padding_idx: Optional[int] = None,
         include_last_offset: bool = False) -> torch.Tensor:
    """``nn.EmbeddingBag``'s pooling of a half table, in float32.

    The bag's rows are gathered as float32 first and pooled by
    ``embedding_bag`` over that small block (its rows in input order), so every
    option means what it means in ``nn.EmbeddingBag``: a padding entry points
    at an extra zero row that is that block's padding row (left out of sums
    and of means' counts), 2-D input is bags of equal length.
    """
    if input.dim() == 2:
        bags, length = input.shape
        offsets = torch.arange(0, bags * length, max(length, 1), device=input.device)[:bags]
        input = input.reshape(-1)
        per_sample_weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
        include_last_offset = False
    rows = HalfRows.apply(weight, input, padding_idx)
    positions = torch.arange(input.numel(), device=input.device)
    pad = None
    if padding_idx is not None:
        pad = input.numel()
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        positions = torch.where(input == padding_idx, pad, positions)
    return torch.nn.functional.embedding_bag(
        positions, rows, offsets, mode=mode, per_sample_weights=per_sample_weights,
        include_last_offset=include_last_offset, padding_idx=pad,
    )


# --- the update: the optimizer's rule in float32, rounded stochastically ----------

def add(param: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> None:
    """Record gradient rows of a half table for the next step of the optimizer that holds it.

    All rows recorded for a table by then (gradient accumulation, a table
    called twice) are summed per row and applied once, as a torch optimizer
    does with an accumulated sparse gradient.
    """
    step.defer(param, apply_rows, (indices, rows.float()), indices.numel())


def apply_rows(optimizer: torch.optim.Optimizer, group: ParamGroup, payloads: Payloads) -> None:
    """Apply the rows recorded for the half tables of ``group`` with ``optimizer``'s rule.

    Each table's rule runs on its own rows and state; the rounding, most of
    an update's arithmetic, runs once for all tables of one dtype, device and
    width (DLRM's 26 tables: one set of kernels rather than 26), with the
    generator of the first of them.
    """
    recorded: Dict[int, Tuple[torch.Tensor, _Recorded]] = {}
    for table, entry in payloads:
        recorded.setdefault(id(table), (table, []))[1].append(entry)
    buckets: Dict[Tuple[torch.dtype, torch.device, int], List[Tuple[torch.Tensor, _Recorded]]] = {}
    for table, entries in recorded.values():
        buckets.setdefault((table.dtype, table.device, table.shape[1]), []).append((table, entries))
    for (dtype, _, _), tables in buckets.items():
        updates = []
        for table, entries in tables:
            indices, grads = entries[0] if len(entries) == 1 else (
                torch.cat([i for i, _ in entries]), torch.cat([g for _, g in entries]))
            rows, inverse = torch.unique(indices, return_inverse=True)
            grad = grads.new_zeros(rows.numel(), grads.shape[1]).index_add_(0, inverse, grads)
            rule, state = rule_of(optimizer, group, table), optimizer.state[table]
            total = accumulator(rule, state, table, table.shape[0], group, optimizer.defaults)
            updates.append((table, rows, step_values(rule, table, rows, grad, [state], group, optimizer.defaults,
                                                     total)))
        state = optimizer.state[tables[0][0]]
        generator = generator_of(tables[0][0], state)
        values = updates[0][2] if len(updates) == 1 else torch.cat([u for _, _, u in updates])
        rounded = stochastic_round(values, dtype, generator)
        start = 0
        for table, rows, _ in updates:
            table.index_copy_(0, rows, rounded[start:start + rows.numel()])
            start += rows.numel()
        state["mlet_rng"] = generator.get_state().view(dtype)


def check_optimizer(optimizer: torch.optim.Optimizer, group: ParamGroup, param: torch.Tensor) -> None:
    """Raise now if ``optimizer`` has no stochastic-rounding rule here for half table ``param``."""
    rule_of(optimizer, group, param)


def rule_of(optimizer: torch.optim.Optimizer, group: ParamGroup, param: torch.Tensor) -> rules.Rule:
    """The rule (``rules.py``) ``optimizer`` applies to half table ``param``; one line refusing any other."""
    rule = rules.of(optimizer)
    what = f"{dtype_name(param.dtype)} MLET tables"
    if rule is None:
        names = [r.optimizer if r.module else f"DLRM's {r.optimizer}" for r in rules.RULES.values()]
        known = ", ".join(names[:-1]) + " and " + names[-1]
        raise MLETError(f"{what} are updated by dlrm-mlet's stochastic-rounding rules for {known}, not "
                        f"{type(optimizer).__name__}; use one of those, or float32 tables (to_mlet's "
                        "table_dtype=None; DLRM: --mlet-table-dtype=fp32)")
    rule.refuse(optimizer, group, what)
    return rule


def accumulator(rule: rules.Rule, state: ParamState, param: torch.Tensor, rows: int, group: ParamGroup,
                defaults: Dict[str, Any]) -> Optional[torch.Tensor]:
    """The rule's float32 accumulator of half table ``param`` (or of ``rows`` rows of a buffer), kept in
    ``state[rule.half_key]`` as bytes in ``param``'s dtype (module docstring); None when the rule keeps none."""
    if rule.half_key is None:
        return None
    # A rule with a half_key has a state_key and an accumulator shape (the casts).
    if not rule.row_wise:  # the optimizer's own accumulator, in the table's dtype: never used here
        state.pop(cast(str, rule.state_key), None)
    stored = state.get(rule.half_key)
    if stored is not None:
        return stored.view(torch.float32)
    initial = float(group.get("initial_accumulator_value", defaults.get("initial_accumulator_value", 0.0)))
    total = torch.full(cast(Tuple[int, ...], rule.accumulator_shape(rows, param.shape[1])), initial,
                       dtype=torch.float32, device=param.device)
    state[rule.half_key] = total.view(param.dtype)
    return total


def step_values(rule: rules.Rule, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                states: Sequence[ParamState], group: ParamGroup, defaults: Dict[str, Any],
                total: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``rule``'s new float32 values for the unique ``rows`` of ``weight`` (a table, or a buffer of several):
    the step counted in each of ``states``, ``total`` (the float32 accumulator) updated in place."""
    steps = [rule.count(state) for state in states][-1]
    return rule.new_rows(weight, rows, grad, rule.lr(group, defaults, steps), rule.eps(group, defaults), total)


def float32_state(state: ParamState) -> ParamState:
    """A half table's optimizer state as the optimizer itself would hold it for a float32 table.

    ``mlet_sum`` becomes Adagrad's ``sum``, ``mlet_momentum`` RWSAdagrad's
    ``momentum`` (float32 views, no copy); the rounding generator is dropped.
    Other state is passed through.
    """
    names = {"mlet_sum": "sum", "mlet_momentum": "momentum"}
    out = {}
    for key, value in state.items():
        if key in names:
            out[names[key]] = value.view(torch.float32)
        elif key != "mlet_rng":
            out[key] = value
    return out


def generator_of(param: torch.Tensor, state: ParamState) -> torch.Generator:
    """The table's rounding generator: restored from its state, else seeded from the table itself.

    Seeded from the table's first rows (no draw from a global RNG, so a run's
    other random numbers are the same as with fp32 tables) and saved in the
    optimizer state after every step, so a resumed run rounds as the
    uninterrupted one did.
    """
    generator = torch.Generator(device=param.device)
    saved = state.get("mlet_rng")
    if saved is None:
        head = param.detach()[:4].float().cpu().numpy().tobytes()
        generator.manual_seed(zlib.crc32(head) ^ (param.shape[0] << 8) ^ param.shape[1])
    else:
        generator.set_state(saved.cpu().view(torch.uint8))
    return generator
