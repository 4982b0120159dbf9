"""Checkpoint files, read and written safely.

* reading goes through ``torch.load(weights_only=True)``: a checkpoint is data
  and never runs code; numpy scalars (which stock DLRM writes) are allowed as
  plain values, nothing else;
* writing holds only tensors and plain Python values (``to_plain``), so stock
  DLRM on torch >= 2.6 loads it without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
* writing is atomic (``files.atomic_write``).
"""

import os
import pickle
import threading
from typing import Any, Dict, Tuple

import numpy as np
import torch

from .errors import MLETError, first_line
from .files import StrPath, atomic_write

Checkpoint = Dict[str, Any]  # what DLRM saves and loads: its keys, and our "mlet" record in PATH.mlet

# What a stock DLRM checkpoint may hold besides tensors: numpy scalars for
# train_loss/test_acc. Rebuilding a numpy scalar from its dtype and bytes runs
# no code, which is why torch's docs allow exactly these.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed it
_NUMPY_SCALAR_GLOBALS = [np.dtype, _NUMPY_CORE.multiarray.scalar] + [
    type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")
]
# torch's safe_globals context sets and restores one process-wide list: a thread leaving it while
# another is inside torch.load takes the other's allowance away (sweep --jobs loads from threads).
_SAFE_GLOBALS_LOCK = threading.Lock()


def _checkpoint_file(path):
    """``path`` as a string when it is a ``torch.save`` file; one line naming what it is otherwise.

    ``torch.save`` writes a zip archive (or, in its legacy format, a pickle): a
    text file, a CSV or a JSON file given by mistake is named as what it is,
    before torch's own advice about ``weights_only`` (which would not help).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MLETError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        text = head.decode("utf-8", "replace").splitlines()[0][:40] if head else ""
        kind = "an empty file" if not head else f"it begins {text!r}"
        raise MLETError(f"{path}: not a checkpoint (not a file torch.save wrote: {kind})")
    return path


def load_checkpoint(path: StrPath) -> Any:
    """Load a checkpoint file on the CPU, refusing anything that is not data."""
    path = _checkpoint_file(path)
    try:
        with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if blocked:
            raise MLETError(
                f"{path}: refused: it holds objects that are not tensors or plain values "
                f"({blocked[0]}); loading it could run code, so it was not loaded"
            ) from None
        raise MLETError(f"{path}: not a readable checkpoint ({first_line(error)})") from None
    except Exception as error:  # torch raises many types for a damaged zip
        raise MLETError(
            f"{path}: not a readable checkpoint (truncated or not a torch.save file: "
            f"{type(error).__name__}: {first_line(error)})"
        ) from None
    return obj


def check_safe_to_load(path: StrPath) -> bool:
    """Refuse a file ``torch.load(weights_only=True)`` would refuse, before anyone loads it.

    Reads only the pickle's global names (no tensor data), so callers whose
    own loader gives a traceback (DLRM's ``--load-model``) can first get one
    clear line. Returns whether the file holds numpy scalars, which weights-only
    loading refuses unless allowed as ``load_checkpoint`` does.
    """
    path = _checkpoint_file(path)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:
        raise MLETError(
            f"{path}: not a readable checkpoint (truncated or not a torch.save file: "
            f"{type(error).__name__}: {first_line(error)})"
        ) from None
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_SCALAR_GLOBALS}
    allowed |= {name.replace("numpy._core", "numpy.core") for name in allowed}
    unsafe = [name for name in found if name not in allowed]
    if unsafe:
        raise MLETError(
            f"{path}: refused: it holds objects that are not tensors or plain values "
            f"(GLOBAL {unsafe[0]}); loading it could run code, so it was not loaded"
        )
    return bool(found)


def load_model_file(path: StrPath) -> Tuple[Checkpoint, bool]:
    """``(checkpoint, plain)``: a DLRM checkpoint dict, or a state dict (``torch.save(model.state_dict())``,
    what ``to_mlet`` users save) wrapped as ``{"state_dict": ...}`` with ``plain`` True."""
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return ckpt, False
    if isinstance(ckpt, dict) and ckpt and all(isinstance(k, str) and torch.is_tensor(v) for k, v in ckpt.items()):
        return {"state_dict": ckpt}, True
    raise MLETError(f"{path}: neither a DLRM checkpoint (a dict with 'state_dict') nor a state dict "
                    "(names to tensors, as torch.save(model.state_dict()) writes)")


def load_dlrm_checkpoint(path: StrPath) -> Checkpoint:
    """A DLRM checkpoint dict, or a plain state dict wrapped as one (``load_model_file``)."""
    return load_model_file(path)[0]


def atomic_save(obj: object, path: StrPath) -> None:
    """``torch.save(obj, path)``, atomically; the bytes equal a plain ``torch.save``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def to_plain(obj: Any) -> Any:
    """Replace numpy scalars and arrays by Python numbers and tensors, recursively."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        plain: Any = type(obj)() if type(obj) is not dict else {}  # obj's dict class, _metadata and all
        for key, value in obj.items():
            plain[key] = to_plain(value)
        if hasattr(obj, "_metadata"):
            plain._metadata = obj._metadata
        return plain
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(value) for value in obj)
    return obj
