"""Reading and writing the files dlrm-mlet touches, safely.

Rules kept here for every file:

* reading goes through ``torch.load(weights_only=True)``: a checkpoint is data
  and never runs code; numpy scalars (which stock DLRM writes) are allowed as
  plain values, nothing else;
* writing holds only tensors and plain Python values, so stock DLRM on
  torch >= 2.6 loads it without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
* writing is atomic: a crash or a full disk leaves the previous file intact.
"""

import os
import pickle
import re
import shutil
import socket
import tempfile

import numpy as np
import torch

from .errors import MLETError

# What a stock DLRM checkpoint may hold besides tensors: numpy scalars for
# train_loss/test_acc. Rebuilding a numpy scalar from its dtype and bytes runs
# no code, which is why torch's docs allow exactly these.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed it
_NUMPY_SCALAR_GLOBALS = [np.dtype, _NUMPY_CORE.multiarray.scalar] + [
    type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")
]


def load_checkpoint(path):
    """Load a checkpoint file on the CPU, refusing anything that is not data."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if blocked:
            raise MLETError(
                f"{path}: refused: it holds objects that are not tensors or plain values "
                f"({blocked[0]}); loading it could run code, so it was not loaded"
            ) from None
        raise MLETError(f"{path}: not a readable checkpoint ({_first_line(error)})") from None
    except Exception as error:  # torch raises many types for a damaged zip
        raise MLETError(
            f"{path}: not a readable checkpoint (truncated or not a torch.save file: "
            f"{type(error).__name__}: {_first_line(error)})"
        ) from None
    return obj


def check_safe_to_load(path):
    """Refuse a file ``torch.load(weights_only=True)`` would refuse, before anyone loads it.

    Reads only the pickle's global names (no tensor data), so callers whose
    own loader gives a traceback (DLRM's ``--load-model``) can first get one
    clear line. Returns whether the file holds numpy scalars, which weights-only
    loading refuses unless allowed as ``load_checkpoint`` does.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:
        raise MLETError(
            f"{path}: not a readable checkpoint (truncated or not a torch.save file: "
            f"{type(error).__name__}: {_first_line(error)})"
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


def load_dlrm_checkpoint(path):
    """Load a file that must be a DLRM checkpoint dict (has a ``state_dict``)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise MLETError(f"{path}: not a DLRM checkpoint (no 'state_dict' entry)")
    return ckpt


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else "no detail"


def atomic_save(obj, path):
    """``torch.save`` that never leaves a half-written file at ``path``.

    Writes into a fresh temporary folder beside ``path`` under the same file
    name (torch names the archive after the file, so the bytes equal a plain
    ``torch.save(obj, path)``), fsyncs, then renames over ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    _remove_stale_tmp_dirs(directory, name)
    try:
        tmpdir = tempfile.mkdtemp(prefix=f".{name}.{_WRITER}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise MLETError(f"cannot write {path}: {error.strerror or error}") from None
    tmp = os.path.join(tmpdir, name)
    failure = None
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except Exception as error:  # OSError, torch's RuntimeError on a full disk, pickling errors
        failure = _write_error(error, directory)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if failure is not None:
        # Raised outside the except block: chaining the original error would keep
        # torch's frames, and with them its open file on that disk, alive.
        raise MLETError(f"cannot write {path}: {failure}; any previous file there is unchanged")


# Who writes: a temporary folder names its writer, so a later save of the same file can tell
# the folder of a write that was killed (SIGKILL skips all cleanup) from one still under way.
_WRITER = f"{socket.gethostname()}-{os.getpid()}"


def _remove_stale_tmp_dirs(directory, name):
    """Remove the temporary folders earlier, killed writes of ``name`` left on this host.

    A killed checkpoint write leaves its half-written copy (as large as the
    checkpoint) in a hidden folder; the next save of the same file removes it.
    Folders of writers still alive, or of other hosts sharing the disk, stay.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.(.+)-(\d+)\.[^.]+\.tmp")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and match.group(1) == socket.gethostname() and not _alive(int(match.group(2))) \
                and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _write_error(error, directory):
    """A reason a person can act on; torch reports a full disk as an internal assertion."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        stats = os.statvfs(directory)
        if stats.f_bavail * stats.f_frsize < 2**20:
            return "No space left on device"
    except OSError:
        pass
    return _first_line(error)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_plain(obj):
    """Replace numpy scalars and arrays by Python numbers and tensors, recursively."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        plain = type(obj)() if type(obj) is not dict else {}
        for key, value in obj.items():
            plain[key] = to_plain(value)
        if hasattr(obj, "_metadata"):
            plain._metadata = obj._metadata
        return plain
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(value) for value in obj)
    return obj
