"""Reading and writing DLRM checkpoint dicts safely, and folding them.

A DLRM checkpoint is the dict ``dlrm_s_pytorch.py`` saves: ``state_dict``,
``opt_state_dict`` and bookkeeping (``nepochs``, ``iter``, ``test_acc``, ...).
Rules kept here for every file dlrm-mlet touches:

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
from .folding import PROJ_KEY, TABLE_KEY, _prefix, fold_state_dict, mlet_prefixes

MLET_SUFFIX = ".mlet"

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


def is_mlet_checkpoint(ckpt):
    return bool(mlet_prefixes(ckpt["state_dict"]))


def param_groups_by_name(ckpt):
    """Names of the parameters behind each optimizer group's indices.

    Our ``.mlet`` files record them. For other files, assume DLRM's
    single-process layout: one group over ``parameters()``, which is the order
    of the state dict (DLRM registers no buffers).
    """
    recorded = ckpt.get("mlet", {}).get("param_groups")
    if recorded is not None:
        return [list(names) for names in recorded]
    return [list(ckpt["state_dict"].keys())]


def fold_checkpoint(ckpt, progress=None):
    """Return the stock DLRM checkpoint equivalent to an MLET one.

    ``state_dict`` is folded, ``opt_state_dict`` renumbered for the folded
    parameter list (see ``fold_optimizer_state``), numpy scalars become
    Python numbers and our ``mlet`` record is dropped, leaving exactly the keys
    stock DLRM writes.
    """
    state_dict = ckpt["state_dict"]
    if not mlet_prefixes(state_dict):
        raise MLETError("the checkpoint has no MLET tables (is it already folded?)")
    folded = {key: to_plain(value) for key, value in ckpt.items() if key not in ("mlet", "state_dict")}
    folded["state_dict"] = fold_state_dict(state_dict, progress)
    if ckpt.get("opt_state_dict") is not None:
        folded["opt_state_dict"] = fold_optimizer_state(
            ckpt["opt_state_dict"], param_groups_by_name(ckpt), state_dict
        )
    return {key: folded[key] for key in ckpt if key in folded}


def fold_optimizer_state(opt_state, group_names, state_dict):
    """Renumber an optimizer state dict for the folded parameter list.

    Each table's ``table.weight`` becomes the folded ``weight`` in its place
    and its ``proj.weight`` disappears, so later indices shift down. The
    optimizer's per-parameter state of other parameters is carried over as is.
    For a folded table only an estimate exists: Adagrad's ``sum`` and
    RWSAdagrad's row ``momentum`` are accumulated squared gradients, and if
    gradient components are roughly isotropic, a folded row's per-component
    accumulator is the MLET row's accumulator total divided by
    ``||proj||_F^2``. Rows never updated stay exactly zero. SGD momentum cannot
    be mapped and restarts from zero.
    """
    groups = opt_state["param_groups"]
    counts = [len(group["params"]) for group in groups]
    if counts != [len(names) for names in group_names]:
        raise MLETError(
            f"optimizer state has {counts} parameters per group but the model has "
            f"{[len(names) for names in group_names]}; cannot renumber it for the folded model"
        )
    prefixes = set(mlet_prefixes(state_dict))
    new_state, new_groups, index = {}, [], 0
    for group, names in zip(groups, group_names):
        new_ids = []
        for old_id, name in zip(group["params"], names):
            if _prefix(name, PROJ_KEY) in prefixes:
                continue
            state = opt_state["state"].get(old_id)
            table = _prefix(name, TABLE_KEY)
            if table in prefixes and state is not None:
                state = fold_param_state(state, state_dict[table + PROJ_KEY])
            if state is not None:
                new_state[index] = to_plain(state)
            new_ids.append(index)
            index += 1
        new_groups.append({**to_plain({k: v for k, v in group.items() if k != "params"}), "params": new_ids})
    return {"state": new_state, "param_groups": new_groups}


def fold_param_state(state, proj_weight):
    """Estimate the optimizer state of a folded table (see fold_optimizer_state)."""
    k = proj_weight.shape[1]
    d = proj_weight.shape[0]
    scale = float(proj_weight.detach().double().pow(2).sum())
    scale = scale if scale > 0 else 1.0
    folded = {}
    for key, value in state.items():
        if key == "sum" and torch.is_tensor(value) and value.dim() == 2:
            per_row = value.sum(dim=1, keepdim=True) / scale
            folded[key] = per_row.expand(-1, d).contiguous()
        elif key == "momentum" and torch.is_tensor(value) and value.dim() == 1:
            folded[key] = value * (k / scale)
        elif key == "step":
            folded[key] = value
        # Anything else (SGD momentum_buffer, unknown optimizers' state) has no
        # folded counterpart; the optimizer re-creates it from zero.
    return folded
