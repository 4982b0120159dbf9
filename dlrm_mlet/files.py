"""Reading and writing the files dlrm-mlet touches, safely.

Rules kept here for every file:

* reading goes through ``torch.load(weights_only=True)``: a checkpoint is data
  and never runs code; numpy scalars (which stock DLRM writes) are allowed as
  plain values, nothing else;
* writing holds only tensors and plain Python values, so stock DLRM on
  torch >= 2.6 loads it without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``;
* writing is atomic: a crash or a full disk leaves the previous file intact
  (``atomic_write`` and its kin, used for every file the project writes).

torch is imported where it is used: ``dlrm-mlet patch`` and ``synth`` write
through here and start without it.
"""

import os
import pickle
import re
import shutil
import socket
import tempfile

import numpy as np

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
    import torch

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
    import torch

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


# --------------------------------------------------------------------------- atomic writes
#
# Every file dlrm-mlet writes goes through one of these, so a crash, a kill or a
# full disk never leaves a half-written file under a name a reader trusts:
# ``atomic_write`` (one file, any writer), ``atomic_save`` / ``atomic_write_text`` (its two
# common cases) and ``StagedFiles`` (several files, or a folder, renamed into place together).
# The temporary copy lies in a hidden folder beside the target, ``.NAME.HOST-PID.XXXX.tmp``,
# named after its writer, so a later write of the same name can remove what a killed one left.


def atomic_write(path, write):
    """Call ``write(tmp)``, then rename ``tmp`` over ``path``: never a half-written ``path``.

    ``tmp`` has the file name of ``path`` (torch names its archive after the
    file, so the bytes equal a direct write) inside a fresh hidden folder
    beside it; it is fsynced before the rename. A function taking a writer,
    not a ``with`` block: the failed writer's frames (torch's file still open
    on a full disk among them) must not stay referenced from the error.
    An ``MLETError`` from ``write`` passes through; any other failure is one
    line, ``cannot write PATH: reason; any previous file there is unchanged``.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    folder = _fresh_tmp_dir(directory, name, f"cannot write {path}")
    tmp = os.path.join(folder, name)
    failure = None
    try:
        write(tmp)
        _fsync_tree(tmp)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except MLETError:
        raise
    except Exception as error:  # OSError, torch's RuntimeError on a full disk, pickling errors
        failure = _write_error(error, directory)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if failure is not None:
        # Raised outside the except block: chaining the original error would keep
        # the writer's frames, and with them its open file on that disk, alive.
        raise MLETError(f"cannot write {path}: {failure}; any previous file there is unchanged")


def atomic_save(obj, path):
    """``torch.save(obj, path)``, atomically; the bytes equal a plain ``torch.save``."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` as UTF-8, line ends as given, atomically (see ``atomic_write``)."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    atomic_write(path, write)


class StagedFiles:
    """Outputs written together: first into a hidden folder beside them, then renamed into place.

    For a set of files a reader takes as complete once one of them exists
    (DLRM's processed files, synth's ``train.txt``, a cache folder): everything
    is written under ``path(name)``, then ``publish`` renames it into place in
    the order given, that file last. Leaving the block removes the folder and
    whatever is still in it. An ``OSError`` inside the block becomes one
    line, ``FAILURE: reason; PROMISE`` (e.g. ``cannot write DIR: No space left
    on device; nothing was written``); an ``MLETError`` passes through.
    """

    def __init__(self, directory, label, failure, promise="nothing was written"):
        self.directory = os.path.abspath(os.fspath(directory))
        self.label, self.failure, self.promise = label, failure, promise
        self.folder = None

    def __enter__(self):
        self.folder = _fresh_tmp_dir(self.directory, self.label, self.failure, self.promise)
        return self

    def path(self, name):
        return os.path.join(self.folder, name)

    def publish(self, moves):
        """Rename each ``(staged path, final path)`` in order; a folder replaces a folder whole."""
        directories = []
        for i, (staged, final) in enumerate(moves):
            _fsync_tree(staged)
            if os.path.isdir(staged) and os.path.isdir(final) and not os.path.islink(final):
                os.replace(final, self.path(f".replaced-{i}"))  # removed with the folder
            os.replace(staged, final)
            directories.append(os.path.dirname(os.path.abspath(final)))
        for directory in dict.fromkeys(directories):
            _fsync_dir(directory)

    def __exit__(self, kind, error, traceback):
        shutil.rmtree(self.folder, ignore_errors=True)
        if isinstance(error, OSError):
            reason = _write_error(error, self.directory)
            raise MLETError(f"{self.failure}: {reason}; {self.promise}") from None
        return False


# Who writes: a temporary folder names its writer, so a later save of the same file can tell
# the folder of a write that was killed (SIGKILL skips all cleanup) from one still under way.
_WRITER = f"{socket.gethostname()}-{os.getpid()}"


def _fresh_tmp_dir(directory, name, failure, promise=None):
    """A new hidden folder for a write of ``name`` in ``directory``, after removing killed writes' folders."""
    _remove_stale_tmp_dirs(directory, name)
    try:
        return tempfile.mkdtemp(prefix=f".{name}.{_WRITER}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise MLETError(f"{failure}: {error.strerror or error}" + (f"; {promise}" if promise else "")) from None


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


def _fsync_tree(path):
    """fsync a written file, or every file of a written folder (and the folders)."""
    if os.path.isdir(path):
        for root, _, names in os.walk(path):
            for name in names:
                if not os.path.islink(os.path.join(root, name)):
                    _fsync_tree(os.path.join(root, name))
            _fsync_dir(root)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    import torch

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
