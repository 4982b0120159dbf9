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

``use(tables, "fbgemm")`` (``--mlet-fused-update=fbgemm``) hands the same step
to fbgemm's table-batched embedding instead (``tbe.py``): it pools the k-wide
rows and applies the update in its own fused kernels, as TorchRec does.

Either way the math is plain SGD applied at the same point of the iteration
as without the option, at the learning rate of the optimizer group that holds
the table, so loss curves match the default path to float tolerance (only
the summation order of repeated rows differs). Momentum, weight decay and
Adagrad need the gradient itself, so they are refused, not approximated.

The choice belongs to each table (``use`` sets it, the grouped engine reads
it), and the rows waiting for a step hang on the table's own weight: two
models, one fused and one not, train side by side in one process, and rows
die with their model. One optimizer step pre-hook, installed by the first
``use``, applies the waiting rows of the parameters the stepping optimizer
holds; rows recorded for a table no optimizer steps are never applied, just
as its gradient would never be.
"""

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..errors import MLETError
from . import half
from .bag import MLETEmbeddingBag

BACKENDS = ("torch", "fbgemm")

_ATTR = "fused_update"  # on an MLETEmbeddingBag: None (sparse gradients), "torch" or "fbgemm"
_ROWS = "_mlet_pending"  # on a table's weight: [(row count, apply(optimizer, group)), ...] until its optimizer steps
_hook = None
_waiting = 0  # parameters with rows waiting (may overcount rows of dropped models: then just no fast path)


def use(tables, backend="torch"):
    """Set how the MLET tables in ``tables`` (a module, or a list of modules) are updated.

    ``"torch"`` or ``"fbgemm"``: rows go to the next optimizer step; None: sparse
    gradients, the default. Other modules are left alone. Returns how many
    tables were set.
    """
    if backend is not None and backend not in BACKENDS:
        raise MLETError(f"fused update backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    count = 0
    for table in _modules(tables):
        if isinstance(table, MLETEmbeddingBag):
            setattr(table, _ATTR, backend)
            count += 1
    return count


def backend_of(table):
    """``"torch"`` or ``"fbgemm"`` when ``use`` set it for this table, else None."""
    return getattr(table, _ATTR, None)


def add(param, indices, rows):
    """Record the gradient of ``param`` at ``indices`` (repeats add up), for the next step.

    Half-precision tables take their own rule (``half.add``: the optimizer's
    update in float32, stochastically rounded).
    """
    if half.is_half(param):
        half.add(param, indices, rows)
        return

    def apply(optimizer, group):
        check_plain_sgd(optimizer, group)
        param.index_add_(0, indices, rows.to(param.dtype), alpha=-group["lr"])
    defer(param, indices.numel(), apply)


def check_plain_sgd(optimizer, group):
    """The fp32 fused paths apply plain SGD steps: refuse any optimizer they would misapply."""
    if (type(optimizer) is not torch.optim.SGD or group.get("momentum") or group.get("weight_decay")
            or group.get("maximize")):
        raise MLETError("--mlet-fused-update applies plain SGD steps to the MLET tables; this "
                        f"optimizer is {type(optimizer).__name__} with momentum/weight decay/maximize")


def defer(param, rows, apply):
    """Run ``apply(optimizer, group)`` at the next step of the optimizer holding ``param``.

    ``group`` is the param group holding it at that step, so its lr is the
    scheduler's for that step.
    """
    global _waiting, _hook
    if _hook is None:
        _hook = register_optimizer_step_pre_hook(_apply)
    entries = getattr(param, _ROWS, None)
    if entries is None:
        entries = []
        setattr(param, _ROWS, entries)
        _waiting += 1
    entries.append((rows, apply))


def pending_rows(tables):
    """How many gradient rows of ``tables`` (a module, or a list of modules) wait for a step."""
    return sum(rows for m in _modules(tables) for p in m.parameters(recurse=False)
               for rows, _ in getattr(p, _ROWS, ()))


def _modules(tables):
    return tables.modules() if isinstance(tables, nn.Module) else (m for t in tables for m in t.modules())


def _apply(optimizer, args, kwargs):
    global _waiting
    if not _waiting:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            entries = getattr(param, _ROWS, None)
            if entries is None:
                continue
            delattr(param, _ROWS)
            _waiting -= 1
            with torch.no_grad():
                for _, apply in entries:
                    apply(optimizer, group)
