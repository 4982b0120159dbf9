"""One rule per optimizer: what MLET's own updates apply at the optimizer's step, and what they keep.

MLET applies three optimizers' rules itself, in three places: the half
tables' update in float32 with stochastic rounding (``half.py``), the packed
tables' update at the step (``engine/adaptive.py``, ``engine/half_update.py``,
``engine/fused.py``), and the memory budget's count of optimizer state
(``budget.py``). Each optimizer is one object here, with everything those
places ask of it: which optimizer class it is (and the options it refuses),
how it counts a step and the learning rate that step takes, the state it
keeps and its shape, and its arithmetic on a table's unique rows. Adding an
optimizer is one more object.

The arithmetic is the optimizer's own on a sparse gradient (``torch.optim.SGD``,
``torch.optim.Adagrad``, DLRM's row-wise ``RWSAdagrad``); only tensor methods
are used, so this module, like the budget that reads it, imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, cast

from ..errors import MLETError

if TYPE_CHECKING:  # annotations only: importing this module imports no torch
    import torch

    from .step import Check, ParamGroup, ParamState

FLOAT32 = 4  # bytes: every accumulator is float32


class Rule:
    """One optimizer's rule. ``state_key``: where the optimizer keeps its accumulator (None: none);
    ``half_key``: where a half table's float32 accumulator is kept instead; ``row_wise``: one value a row."""

    def __init__(self, name: str, optimizer: str, module: str = "", state_key: Optional[str] = None,
                 half_key: Optional[str] = None, row_wise: bool = False, dense_at_step: bool = True) -> None:
        self.name, self.optimizer, self.module = name, optimizer, module  # the class's name and module prefix
        self.state_key, self.half_key, self.row_wise = state_key, half_key, row_wise
        # whether MLET applies it to the (dense) projections at the step too, or leaves them their gradients
        self.dense_at_step = dense_at_step

    def is_for(self, optimizer: torch.optim.Optimizer) -> bool:
        kind = type(optimizer)
        return kind.__name__ == self.optimizer and kind.__module__.startswith(self.module)

    def __repr__(self) -> str:
        return f"Rule({self.name!r})"

    def refuse(self, optimizer: torch.optim.Optimizer, group: ParamGroup, what: str) -> None:
        """Raise ``MLETError`` unless ``optimizer`` is this rule's optimizer without options the rule
        cannot apply (momentum, weight decay, maximize, nesterov need per-element state or the gradient)."""
        name = type(optimizer).__name__
        if not self.is_for(optimizer):
            raise MLETError(f"{what} are updated at the step by {self.optimizer}'s rule (DLRM's "
                            f"--optimizer={self.name}); this optimizer is {name}")
        for option in ("momentum", "weight_decay", "maximize", "nesterov"):
            if group.get(option):
                raise MLETError(f"{what}: {name} with {option} is not supported (it needs the gradient or "
                                "per-element state this update does not keep)")

    def checker(self, what: str) -> Check:
        """The optimizer check (``step.require``) of parameters this rule updates at the step: ``refuse``."""
        def check(optimizer: torch.optim.Optimizer, group: ParamGroup, param: Optional[torch.Tensor] = None) -> None:
            self.refuse(optimizer, group, what)
        return check

    def count(self, state: ParamState) -> float:
        """Count this step in a parameter's state, as the optimizer does; the steps taken so far."""
        if self.state_key is None:
            return 0
        if self.row_wise:  # RWSAdagrad: a plain number
            state["step"] = state.get("step", 0) + 1
            return state["step"]
        if "step" in state:  # torch's Adagrad: a tensor it made with the state, counted in place
            state["step"] += 1
        else:
            state["step"] = 1.0
        return float(state["step"])

    def lr(self, group: ParamGroup, defaults: Dict[str, Any], steps: float) -> float:
        """The learning rate a step takes (Adagrad's ``lr_decay`` applied)."""
        if self.state_key is None:
            return group["lr"]
        decay = group.get("lr_decay", defaults.get("lr_decay", 0.0))
        return group["lr"] / (1.0 + (float(steps) - 1.0) * decay)

    def eps(self, group: ParamGroup, defaults: Dict[str, Any]) -> float:
        return group.get("eps", defaults.get("eps", 1e-10))

    def accumulator_shape(self, rows: int, width: int) -> Optional[Tuple[int, ...]]:
        """The shape of the accumulator of an ``rows x width`` table (None: the rule keeps none)."""
        if self.state_key is None:
            return None
        return (rows,) if self.row_wise else (rows, width)

    def state_bytes(self, rows: int, width: int) -> int:
        """Bytes of optimizer state for an ``rows x width`` parameter (float32 accumulators)."""
        shape = self.accumulator_shape(rows, width)
        return 0 if shape is None else FLOAT32 * rows * (1 if self.row_wise else width)

    def squares(self, grad: torch.Tensor) -> torch.Tensor:
        """What one step adds to the accumulator of the rows ``grad`` updates."""
        return grad * grad if not self.row_wise else (grad * grad).mean(dim=1)

    def new_rows(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float, eps: float,
                 accumulator: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The rule's new float32 values of ``weight``'s unique ``rows`` (their summed gradient ``grad``),
        the accumulator updated in place: for tables whose values are rounded before they are stored."""
        old = weight.index_select(0, rows).float()
        if self.state_key is None:
            return old - lr * grad
        total = cast("torch.Tensor", accumulator)  # a rule with a state is always handed its accumulator
        total.index_add_(0, rows, self.squares(grad))
        std = total.index_select(0, rows).sqrt_().add_(eps)
        return old - lr * grad / (std if not self.row_wise else std.unsqueeze(1))

    def apply(self, weight: torch.Tensor, accumulator: Optional[torch.Tensor], rows: torch.Tensor,
              grad: torch.Tensor, lr: float, eps: float) -> None:
        """The rule on ``weight``'s unique ``rows`` in place (float32 tables); ``grad`` is consumed."""
        if self.state_key is None:
            weight.index_add_(0, rows, grad, alpha=-lr)
            return
        total = cast("torch.Tensor", accumulator)  # a rule with a state is always handed its accumulator
        total.index_add_(0, rows, self.squares(grad))  # rows are unique: one add each, in place
        std = total.index_select(0, rows).sqrt_().add_(eps)
        weight.index_add_(0, rows, grad.div_(std if not self.row_wise else std.unsqueeze(1)), alpha=-lr)


SGD = Rule("sgd", "SGD", "torch.optim")
ADAGRAD = Rule("adagrad", "Adagrad", "torch.optim", state_key="sum", half_key="mlet_sum")
# DLRM's row-wise Adagrad; its rule for dense parameters is its own, so the projections keep their gradients
RWSADAGRAD = Rule("rwsadagrad", "RWSAdagrad", state_key="momentum", half_key="mlet_momentum", row_wise=True,
                  dense_at_step=False)
RULES = {rule.name: rule for rule in (SGD, ADAGRAD, RWSADAGRAD)}
ADAPTIVE = tuple(name for name, rule in RULES.items() if rule.state_key)  # the rules with an accumulator
ALIASES = {"rowwise_adagrad": "rwsadagrad"}  # TorchRec's name for the row-wise one


def named(name: str, flag: str = "--optimizer") -> Rule:
    """The rule of DLRM's ``--optimizer`` name (TorchRec's ``rowwise_adagrad`` too); one line otherwise."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in RULES:
        raise MLETError(f"{flag}: expected one of {', '.join(RULES)}, got {name!r}")
    return RULES[key]


def of(optimizer: torch.optim.Optimizer) -> Optional[Rule]:
    """The rule an optimizer object applies (by its class), or None when MLET has none for it."""
    return next((rule for rule in RULES.values() if rule.is_for(optimizer)), None)
