"""Writing every file dlrm-mlet writes atomically: a crash or a full disk leaves the previous file intact.

No torch here: ``dlrm-mlet patch``, ``synth`` and the reports write through
this module and start without it (checkpoints: ``checkpoint_io.py``).
"""

import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterable, Optional, Tuple, Union, cast

from .errors import MLETError, first_line

StrPath = Union[str, "os.PathLike[str]"]  # a file name as open() takes it: a str or a path object

# --------------------------------------------------------------------------- atomic writes
#
# Every file dlrm-mlet writes goes through one of these, so a crash, a kill or a
# full disk never leaves a half-written file under a name a reader trusts:
# ``atomic_write`` (one file, any writer), ``atomic_save`` / ``atomic_write_text`` (its two
# common cases) and ``StagedFiles`` (several files, or a folder, renamed into place together).
# The temporary copy lies in a hidden folder beside the target, ``.NAME.HOST-PID.XXXX.tmp``,
# named after its writer, so a later write of the same name can remove what a killed one left.


def atomic_write(path: StrPath, write: Callable[[str], object]) -> None:
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


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, line ends as given, atomically (see ``atomic_write``)."""

    def write(tmp: str) -> None:
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

    def __init__(self, directory: StrPath, label: str, failure: str, promise: str = "nothing was written") -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.label, self.failure, self.promise = label, failure, promise
        self.folder: Optional[str] = None  # set on entering the block

    def __enter__(self):
        self.folder = _fresh_tmp_dir(self.directory, self.label, self.failure, self.promise)
        return self

    def path(self, name: str) -> str:
        return os.path.join(cast(str, self.folder), name)  # (called inside the block)

    def publish(self, moves: Iterable[Tuple[StrPath, StrPath]]) -> None:
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


def check_writable(path: StrPath, *names: str) -> None:
    """Before any work: ``path`` can be written (its folder exists and takes a file), so a run
    does not find out at its first save. Temporary folders killed writes of ``path`` (and of
    ``names`` beside it) left behind are removed on the way."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise MLETError(f"{path}: is a folder; give a file name")
    if not os.path.isdir(directory):
        raise MLETError(f"{path}: its folder {directory} does not exist")
    for other in (name,) + names:
        _remove_stale_tmp_dirs(directory, other)
    shutil.rmtree(_fresh_tmp_dir(directory, name, f"cannot write {path}"), ignore_errors=True)


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
    return first_line(error)


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


