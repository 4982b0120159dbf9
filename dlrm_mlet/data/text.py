"""Raw text files, read safely: line counts, opening with one-line errors, numbered decoded lines."""

import os
from typing import BinaryIO, Iterable, Iterator, Tuple

from ..errors import MLETError
from ..files import StrPath


def count_lines(path: StrPath) -> int:
    """Lines in a file, counted in 16 MiB blocks (fast, constant memory)."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(16 * 2**20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def open_text(path: StrPath) -> BinaryIO:
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MLETError(f"{path}: the file is empty")
    return open(path, "rb")


def numbered_lines(handle: Iterable[bytes], path: StrPath) -> Iterator[Tuple[int, str]]:
    """Numbered lines without their line ending; non-UTF-8 bytes are named by line.

    Decoded line by line (not by a text stream's blocks) so the error points at
    the right line.
    """
    for number, raw in enumerate(handle, 1):
        try:
            yield number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise MLETError(f"{path}:{number}: not UTF-8 text ({error.reason})") from None
