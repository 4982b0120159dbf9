"""Work that waits for the optimizer's next step: the one owner of dlrm-mlet's optimizer hooks.

Some MLET updates cannot be plain gradient tensors: a half-precision table's
rows are updated by dlrm-mlet's own stochastic-rounding rule (``half.py``),
and DLRM's many tables take SGD's update without gradient tensors
(``engine/fused.py``, ``engine/tbe.py``). Backward hands such an update to
``defer``; the next ``step()`` of the optimizer holding the parameter applies
it, at that step's learning rate (so a scheduler is honoured), before the
optimizer's own update of everything else.

How the step is reached, symmetric to register and remove like
``torch.nn.utils.parametrize``:

* ``attach(optimizer)``: a hook on that optimizer alone, and the check, now,
  that it can serve the MLET parameters it holds (``require``); no
  process-wide state. Parameters an attached optimizer holds never install
  the global hook. ``detach(optimizer)`` (or the handle's ``remove()``) undoes it.
* otherwise the first ``defer`` installs one process-wide pre-step hook, so
  a model used as plain PyTorch (``to_mlet``, then any loop) just works; it
  applies what the stepping optimizer holds and checks it at that step.
  ``remove_global_hook()`` takes it away.

Pending work is kept here, keyed by parameter (never as attributes on the
parameters), and dies with its parameter, so ``pending()`` is exact. Work for
a parameter no optimizer steps is never applied, as its gradient would never be.
``on_step`` registers the other hooks dlrm-mlet needs (DLRM's per-step
logging, a resumed row-wise Adagrad) by name, once each.
"""

import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from ..errors import MLETError

ParamGroup = Dict[str, Any]  # one of an optimizer's param_groups: its "params", "lr" and other options
ParamState = Dict[str, Any]  # optimizer.state[param]: what the optimizer keeps for one parameter
Payloads = List[Tuple[torch.Tensor, Any]]  # what an Apply gets: (param, payload) in the order deferred
Apply = Callable[[torch.optim.Optimizer, ParamGroup, Payloads], None]  # deferred work, run at the step
Check = Callable[[torch.optim.Optimizer, ParamGroup, torch.Tensor], None]  # raises for an optimizer it refuses
StepHook = Callable[[torch.optim.Optimizer, Tuple[Any, ...], Dict[str, Any]], None]  # torch's step hooks


class _ByParam:
    """A dict keyed by a tensor's identity whose entries die with the tensor.

    Not a ``WeakKeyDictionary``: tensors compare element by element, so they
    cannot be compared as keys.
    """

    def __init__(self) -> None:
        self._items: Dict[int, Tuple[weakref.ref, Any]] = {}

    def get(self, obj: torch.Tensor) -> Any:
        found = self._items.get(id(obj))
        return found[1] if found is not None and found[0]() is obj else None

    def put(self, obj: torch.Tensor, value: Any) -> Any:
        key = id(obj)
        self._items[key] = (weakref.ref(obj, lambda _: self._items.pop(key, None)), value)
        return value

    def pop(self, obj: torch.Tensor) -> Any:
        found = self._items.pop(id(obj), None)
        return found[1] if found is not None and found[0]() is obj else None

    def values(self) -> List[Any]:
        return [value for ref, value in list(self._items.values()) if ref() is not None]

    def __len__(self) -> int:
        return len(self._items)


_pending = _ByParam()  # param -> [(rows, apply, payload), ...] in the order deferred
_required = _ByParam()  # param -> check(optimizer, group, param)
_held = _ByParam()  # parameters of attached optimizers: they need no global hook
_replaced = _ByParam()  # parameters to_mlet took out of a model: param -> why
_attached: Dict[int, RemovableHandle] = {}  # id(optimizer) -> hook handle
_global: Optional[RemovableHandle] = None
_named: Dict[str, RemovableHandle] = {}  # name -> handle of an on_step hook


def defer(param: torch.Tensor, apply: Apply, payload: Any = None, rows: int = 0) -> None:
    """Run ``apply(optimizer, group, payloads)`` at the next step of the optimizer holding ``param``.

    ``group`` is the param group holding it at that step. Entries of one
    group with the same ``apply`` are applied by one call, ``payloads`` being
    ``[(param, payload), ...]`` in the order deferred: an update batched over
    many tables sees them all at once. ``rows`` is what ``pending`` counts.
    """
    entries = _pending.get(param)
    if entries is None:
        entries = _pending.put(param, [])
    entries.append((rows, apply, payload))
    if _global is None and _held.get(param) is None:
        _install_global()


def require(param: torch.Tensor, check: Optional[Check]) -> None:
    """Declare that ``param`` needs an optimizer ``check(optimizer, group, param)`` accepts (it raises if not).

    ``check=None`` withdraws the requirement.
    """
    if check is None:
        _required.pop(param)
    else:
        _required.put(param, check)


def replaced(param: torch.Tensor, why: str) -> None:
    """Mark ``param`` as no longer in its model (``to_mlet`` swapped its module): ``check`` refuses an
    optimizer that still holds it, since it would train a tensor the model no longer uses."""
    _replaced.put(param, why)


def check(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``MLETError`` now if ``optimizer`` cannot serve an MLET parameter it holds, or holds a replaced one."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            why = _replaced.get(param)
            if why is not None:
                raise MLETError(f"this optimizer holds a {tuple(param.shape)} parameter that is no longer in the "
                                f"model ({why})")
            needs = _required.get(param)
            if needs is not None:
                needs(optimizer, group, param)


def attach(optimizer: torch.optim.Optimizer) -> RemovableHandle:
    """Apply deferred work at ``optimizer``'s steps through a hook of its own; checks it first.

    Returns the hook's handle (``remove()`` detaches). Attaching twice is one hook.
    """
    check(optimizer)
    if id(optimizer) not in _attached:
        handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: run(opt))
        _attached[id(optimizer)] = handle
        weakref.finalize(optimizer, _attached.pop, id(optimizer), None)
    for group in optimizer.param_groups:
        for param in group["params"]:
            _held.put(param, True)
    return _attached[id(optimizer)]


def detach(optimizer: torch.optim.Optimizer) -> None:
    handle = _attached.pop(id(optimizer), None)
    if handle is not None:
        handle.remove()


def run(optimizer: torch.optim.Optimizer) -> None:
    """Apply the work waiting for the parameters ``optimizer`` holds (what the hooks call)."""
    if not _pending:
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            batches: Dict[Apply, Payloads] = {}
            for param in group["params"]:
                entries = _pending.pop(param)
                if entries is None:
                    continue
                needs = _required.get(param)
                if needs is not None:
                    needs(optimizer, group, param)
                for _, apply, payload in entries:
                    batches.setdefault(apply, []).append((param, payload))
            for apply, payloads in batches.items():
                apply(optimizer, group, payloads)


def pending(params: Union[nn.Module, Iterable[Union[torch.Tensor, nn.Module]], None] = None) -> int:
    """How many rows wait for a step: of ``params`` (parameters or modules), or of every parameter."""
    if params is None:
        lists = _pending.values()
    else:
        if isinstance(params, torch.nn.Module):
            params = [params]
        found = {id(p): p for item in params
                 for p in (item.parameters() if isinstance(item, torch.nn.Module) else [item])}
        lists = [e for p in found.values() if (e := _pending.get(p)) is not None]
    return sum(rows for items in lists for rows, _, _ in items)


def waiting() -> int:
    """How many parameters have work waiting (exact: work dies with its parameter)."""
    return len(_pending)


def _install_global() -> None:
    global _global
    _global = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: run(optimizer))


def remove_global_hook() -> None:
    """Remove the process-wide hook (installed again by the next ``defer`` that needs it)."""
    global _global
    if _global is not None:
        _global.remove()
        _global = None


def on_step(name: str, hook: StepHook, after: bool = False) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs)`` before (or ``after``) every optimizer step, once per name.

    A second registration under the same name replaces the first. Returns the handle.
    """
    old = _named.pop(name, None)
    if old is not None:
        old.remove()
    _named[name] = (register_optimizer_step_post_hook if after else register_optimizer_step_pre_hook)(hook)
    return _named[name]


def remove(name: str) -> None:
    handle = _named.pop(name, None)
    if handle is not None:
        handle.remove()

