"""``dlrm-mlet patch``: apply or remove our patch on a DLRM checkout, safely.

The patch is a ``git diff --full-index`` against the pinned DLRM commit, so
its ``index OLD..NEW`` lines name the exact git blob of every file before and
after. We hash the user's files the way git does and act only when all of them
are exactly the pinned ones (apply) or exactly ours (already applied /
reverse). Because the source is known byte for byte, hunks apply at their
stated lines with no fuzz, the result is checked against the NEW blob before
anything is written, and no ``git`` or ``patch`` program is needed.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterable, List, Tuple, cast

from ..errors import MLETError
from ..files import StrPath, atomic_write

PINNED_COMMIT = "090956ee2319ddd349a42232958aefccfe3f7b0a"
PATCH_NAME = "dlrm-mlet.patch"
Hunk = Tuple[int, int, List[Tuple[str, str]]]  # (old_start, new_start, [(tag, line), ...]), tag " ", "+" or "-"


@dataclass
class FilePatch:
    path: str
    old_blob: str
    new_blob: str
    hunks: List[Hunk] = field(default_factory=list)


def patch_path() -> str:
    return str(resources.files("dlrm_mlet.patches").joinpath(PATCH_NAME))


def parse_patch(text: str) -> List[FilePatch]:
    """Split a ``git diff --full-index`` into files, their blob ids and hunks."""
    files = []
    for line in text.splitlines(keepends=True):
        if line.startswith("diff --git "):
            files.append(FilePatch(line.split()[2][2:], "", ""))
        elif line.startswith("index ") and files:
            old, new = line.split()[1].split("..")
            files[-1].old_blob, files[-1].new_blob = old, new
        elif line.startswith("@@"):
            hunk = cast(re.Match, re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", line))  # a git hunk header
            old_start, new_start = map(int, hunk.groups())
            files[-1].hunks.append((old_start, new_start, []))
        elif files and files[-1].hunks and line[:1] in (" ", "+", "-"):
            files[-1].hunks[-1][2].append((line[0], line[1:]))
        elif line.startswith("\\"):
            raise MLETError("patch files ending without a newline are not supported")
    return files


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def apply_hunks(lines: List[str], hunks: Iterable[Hunk], reverse: bool = False) -> List[str]:
    """Apply (or undo) hunks to a list of lines known to match exactly."""
    take, give = ("+", "-") if reverse else ("-", "+")
    out, pos = [], 0
    for old_start, new_start, body in hunks:
        start = new_start if reverse else old_start
        old = [text for tag, text in body if tag in (" ", take)]
        new = [text for tag, text in body if tag in (" ", give)]
        at = start - 1 if old else start  # an empty range names the line before it
        if lines[at:at + len(old)] != old:
            raise MLETError(f"patch hunk at line {start} does not match")
        out += lines[pos:at] + new
        pos = at + len(old)
    return out + lines[pos:]


def checkout_state(dlrm_dir: StrPath, files: Iterable[FilePatch]) -> str:
    """'pinned', 'patched', or a reason naming the first file that is neither."""
    states = set()
    for f in files:
        path = os.path.join(dlrm_dir, f.path)
        if not os.path.isfile(path):
            return f"{f.path} is missing"
        with open(path, "rb") as handle:
            blob = git_blob_id(handle.read())
        if blob == f.old_blob:
            states.add("pinned")
        elif blob == f.new_blob:
            states.add("patched")
        elif is_patched_source(open(path, encoding="utf-8", errors="replace").read()):
            return (f"{f.path} holds another dlrm-mlet version's patch; put DLRM's file back "
                    f"(git checkout {f.path}) and patch again")
        else:
            return f"{f.path} differs from DLRM commit {PINNED_COMMIT[:8]} (git blob {blob[:12]})"
    if len(states) > 1:
        return "some files are patched and others are not"
    return states.pop()


def patch_checkout(dlrm_dir: StrPath, reverse: bool = False, check_only: bool = False) -> str:
    """Apply (or remove) the patch; returns a one-line message for the user.

    Nothing is written unless every file is exactly as expected, and every
    patched file's content is verified against the patch's blob id first.
    """
    if not os.path.isfile(os.path.join(dlrm_dir, "dlrm_s_pytorch.py")):
        raise MLETError(f"{dlrm_dir}: not a DLRM checkout (no dlrm_s_pytorch.py)")
    with open(patch_path(), encoding="utf-8") as handle:
        files = parse_patch(handle.read())
    state = checkout_state(dlrm_dir, files)
    if state not in ("pinned", "patched"):
        raise MLETError(
            f"{dlrm_dir}: {state}; the patch needs a clean checkout of facebookresearch/dlrm at "
            f"commit {PINNED_COMMIT} (nothing was changed)"
        )
    wanted = "pinned" if reverse else "patched"
    if state == wanted:
        return f"{dlrm_dir}: the MLET patch is {'not' if reverse else 'already'} applied; nothing to do"
    if check_only:
        return f"{dlrm_dir}: the MLET patch {'can be removed' if reverse else 'applies cleanly'}"
    outputs = []
    for f in files:
        path = os.path.join(dlrm_dir, f.path)
        with open(path, "rb") as handle:
            lines = handle.read().decode("utf-8").splitlines(keepends=True)
        data = "".join(apply_hunks(lines, f.hunks, reverse)).encode("utf-8")
        if git_blob_id(data) != (f.old_blob if reverse else f.new_blob):
            raise MLETError(f"{f.path}: patching gave unexpected content (nothing was changed)")
        outputs.append((path, data))
    done = []
    try:
        for path, data in outputs:
            with open(path, "rb") as handle:
                done.append((path, handle.read()))
            _replace_file(path, data)
    except MLETError:
        for path, data in done:  # put back what was already replaced
            _replace_file(path, data)
        raise
    verb = "removed from" if reverse else "applied to"
    return f"MLET patch {verb} {dlrm_dir} ({', '.join(f.path for f in files)})"


def _replace_file(path, data):
    """Replace a DLRM file atomically, keeping its permissions."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, os.stat(path).st_mode)

    atomic_write(path, write)


def is_patched_checkout(dlrm_dir: StrPath) -> bool:
    """Whether ``dlrm_dir`` holds exactly this version's patched files."""
    with open(patch_path(), encoding="utf-8") as handle:
        return checkout_state(dlrm_dir, parse_patch(handle.read())) == "patched"


def is_patched_source(text: str) -> bool:
    return "dlrm_mlet.dlrm_glue" in text


def patched_script(source: str, name: str = "dlrm_s_pytorch.py") -> str:
    """The patched text of DLRM's ``name``, from its pinned ``source`` (already patched: as it is).

    The same hunks and the same blob checks as ``patch_checkout``, in memory:
    ``dlrm-mlet run`` patches a copy, never the user's file.
    """
    with open(patch_path(), encoding="utf-8") as handle:
        wanted = next(f for f in parse_patch(handle.read()) if f.path == name)
    blob = git_blob_id(source.encode("utf-8"))
    if blob == wanted.new_blob:
        return source
    if blob != wanted.old_blob:
        raise MLETError(f"{name} differs from DLRM commit {PINNED_COMMIT[:8]} (git blob {blob[:12]}); dlrm-mlet run "
                        f"needs a clean checkout at {PINNED_COMMIT} (or a checkout patched by dlrm-mlet patch)")
    patched = "".join(apply_hunks(source.splitlines(keepends=True), wanted.hunks))
    if git_blob_id(patched.encode("utf-8")) != wanted.new_blob:
        raise MLETError(f"{name}: patching gave unexpected content")
    return patched
