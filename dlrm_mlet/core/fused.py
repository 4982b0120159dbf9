"""SGD on MLET tables without sparse gradient tensors (``--mlet-fused-update``).

By default each MLET table's gradient is a sparse tensor that autograd
accumulates and SGD then adds to the table: bookkeeping around the k-wide
rows. fbgemm's table-batched embeddings avoid it by updating rows inside
backward. We do the same with less machinery (on 2 CPU cores it saves a few
percent of the embedding part, within the noise of a whole DLRM step; see
``benchmarks/embedding_update.py``): backward
hands each table's gradient rows to ``add``, and the next ``step()`` of the
optimizer that holds the table applies them with one ``index_add_`` per table,
at that step's learning rate (so DLRM's scheduler is honoured).

``enable("fbgemm")`` (``--mlet-fused-update=fbgemm``) hands the same step to
fbgemm's table-batched embedding instead (``tbe.py``): it pools the k-wide
rows and applies the update in its own fused kernels, as TorchRec does.

Either way the math is plain SGD applied at the same point of the iteration
as without the option, at the learning rate of the optimizer group that holds
the table, so loss curves match the default path to float tolerance (only
the summation order of repeated rows differs). Momentum, weight decay and
Adagrad need the gradient itself, so they are refused, not approximated.

``enable()`` and ``disable()`` install and remove the one global optimizer
hook; rows recorded for a table no optimizer steps are never applied, just as
its gradient would never be.
"""

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..errors import MLETError

BACKENDS = ("torch", "fbgemm")

_pending = {}  # id(param) -> (param, [(row count, apply(lr)), ...]); the param ref pins the id
_hook = None
_backend = None


def enable(backend="torch"):
    global _hook, _backend
    if backend not in BACKENDS:
        raise MLETError(f"fused update backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _backend = backend
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_apply)


def disable():
    global _hook, _backend
    if _hook is not None:
        _hook.remove()
        _hook = None
    _backend = None
    _pending.clear()


def enabled():
    return _hook is not None


def backend():
    """``"torch"`` or ``"fbgemm"`` while enabled, else None."""
    return _backend


def add(param, indices, rows):
    """Record the gradient of ``param`` at ``indices`` (repeats add up), for the next step."""
    def apply(lr):
        param.index_add_(0, indices, rows.to(param.dtype), alpha=-lr)
    defer(param, indices.numel(), apply)


def defer(param, rows, apply):
    """Run ``apply(lr)`` at the next step of the optimizer holding ``param``, with its group's lr."""
    _pending.setdefault(id(param), (param, []))[1].append((rows, apply))


def pending_rows():
    """How many gradient rows wait for a step (tests and debugging)."""
    return sum(rows for _, entries in _pending.values() for rows, _ in entries)


def _apply(optimizer, args, kwargs):
    if not _pending:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = _pending.pop(id(param), None)
            if entry is None:
                continue
            if (type(optimizer) is not torch.optim.SGD or group.get("momentum") or group.get("weight_decay")
                    or group.get("maximize")):
                raise MLETError("--mlet-fused-update applies plain SGD steps to the MLET tables; this "
                                f"optimizer is {type(optimizer).__name__} with momentum/weight decay/maximize")
            with torch.no_grad():
                for _, apply in entry[1]:
                    apply(group["lr"])
