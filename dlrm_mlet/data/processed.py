"""DLRM's processed data files, read without loading them: table sizes and the training split.

Every file DLRM's loaders train from is accepted, and the training split is
the one DLRM trains on:

* a processed ``.npz`` (Criteo-Kaggle's ``kaggleAdDisplayChallenge_processed.npz``,
  Terabyte's ``terabyte_processed.npz``): all days but the last, the days'
  sizes read from DLRM's ``<stem>_day_count.npz`` beside it (else DLRM's 7
  near-equal days);
* a ``--memory-map`` day file ``<stem>_<i>_reordered.npz``: its siblings
  ``_0`` .. ``_<n-1>``, all but the last;
* a ``--mlperf-bin-loader`` ``<stem>_train.bin`` (int32 rows ``[y, X_int, X_cat]``);
* a dlrm-mlet Avazu cache folder: its ``train_idx.npy`` rows.

Categorical values come in blocks of about a million rows (``X_cat`` of
Criteo-Kaggle is 45M x 26 values), so memory does not grow with the file.
Table sizes are DLRM's (``counts`` in the .npz, a ``_fea_count.npz`` beside
the day or .bin files, the Avazu cache's ``meta.json``), as stored: the caller
applies ``--max-ind-range``.
"""

import glob
import os
import re
import types
import zipfile
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import MLETError
from ..files import StrPath, atomic_write
from .avazu import AvazuDataset
from .days import kaggle_days

CHUNK = 1 << 20  # rows per block of categorical values
NCAT_CRITEO, NDENSE_CRITEO = 26, 13
_DAY_FILE = re.compile(r"^(?P<stem>.+)_(?P<day>\d+)_reordered\.npz$")
KINDS = "a processed .npz, a _<i>_reordered.npz day file, a _train.bin or an Avazu cache folder"


def training_split(path: str) -> types.SimpleNamespace:
    """What DLRM trains on in ``path``: a namespace ``sizes, rows, blocks(), source``.

    ``blocks()`` yields ``(rows, tables)`` integer arrays of the training
    split's categorical values, in file order; ``source`` says where the split
    and the sizes came from, in a few words.
    """
    if os.path.isdir(path):
        return _avazu(path)
    if not os.path.exists(path):
        raise MLETError(f"{path}: no such file or folder")
    name = os.path.basename(path)
    if name.endswith((".txt", ".csv")) or "." not in name:
        raise MLETError(f"{path}: raw text; give what DLRM preprocessed it into ({KINDS})")
    if name.endswith(".bin"):
        return _bins(path)
    if _DAY_FILE.match(name):
        return _day_files(path)
    sizes, members = read_counts(path)
    if "X_cat" not in members:
        raise MLETError(f"{path}: holds table sizes only, no categorical values; give {KINDS}")
    total = npz_shape(path, "X_cat")[0]
    train, source = kaggle_train_rows(path, total)
    return types.SimpleNamespace(sizes=sizes, rows=train, blocks=lambda: npz_blocks(path, "X_cat", train),
                                 source=f"the first {train} of {total} rows ({source})")


def table_sizes(path: str) -> List[int]:
    """DLRM's table sizes for ``path`` (any file ``training_split`` takes, or a ``_fea_count.npz``)."""
    if not os.path.exists(path):
        raise MLETError(f"{path}: no such file or folder")
    if os.path.isdir(path) or path.endswith(".bin") or _DAY_FILE.match(os.path.basename(path)):
        return training_split(path).sizes
    if not os.path.isfile(path):
        raise MLETError(f"{path}: no such file or folder")
    return read_counts(path)[0]


def holds_values(path: str) -> bool:
    """Whether ``path`` holds categorical values (a ``_fea_count.npz`` holds sizes only)."""
    if os.path.isdir(path) or path.endswith(".bin") or _DAY_FILE.match(os.path.basename(path)):
        return True
    return "X_cat" in read_counts(path)[1]


def read_counts(path: StrPath) -> Tuple[List[int], List[str]]:
    """``(counts, member names)`` of a DLRM .npz that holds ``counts``."""
    try:
        with np.load(path) as data:
            members = list(getattr(data, "files", ()))
            if "counts" not in members:
                raise MLETError(f"{path}: no 'counts' array (expected {KINDS}, or a _fea_count.npz)")
            return [int(n) for n in data["counts"]], members
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MLETError(f"{path}: not a DLRM processed .npz ({error})") from None


def _avazu(path):
    try:
        dataset = AvazuDataset(path, "train")
    except (OSError, KeyError, ValueError) as error:
        raise MLETError(f"{path}: not an Avazu cache folder ({error})") from None
    rows = len(dataset.rows)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, rows, CHUNK):
            yield np.asarray(dataset.x_cat[np.sort(dataset.rows[start:start + CHUNK])])

    return types.SimpleNamespace(sizes=[int(n) for n in dataset.counts], rows=rows, blocks=blocks,
                                 source=f"the {rows} training rows of the Avazu cache (train_idx.npy)")


def _fea_counts(folder, what):
    """Table sizes from the one ``*_fea_count.npz`` in ``folder`` (DLRM writes it beside the raw days)."""
    found = sorted(glob.glob(os.path.join(folder, "*_fea_count.npz")))
    if len(found) != 1:
        many = f"{len(found)} ({', '.join(map(os.path.basename, found))})" if found else "none"
        raise MLETError(f"{what}: the table sizes are in DLRM's <stem>_fea_count.npz beside it; found {many}")
    return read_counts(found[0])[0], os.path.basename(found[0])


def is_day_file(path: StrPath) -> bool:
    """Whether ``path`` names one of DLRM's memory-map day files, ``<stem>_<i>_reordered.npz``."""
    return bool(_DAY_FILE.match(os.path.basename(path)))


def day_files(path: StrPath) -> List[str]:
    """Every day file of the set ``path`` (one of them) belongs to, in day order."""
    stem = _DAY_FILE.match(os.path.basename(path)).group("stem")  # type: ignore[union-attr]
    folder = os.path.dirname(os.path.abspath(path))
    days: List[str] = []
    while os.path.exists(os.path.join(folder, f"{stem}_{len(days)}_reordered.npz")):
        days.append(os.path.join(folder, f"{stem}_{len(days)}_reordered.npz"))
    if len(days) < 2:
        raise MLETError(f"{path}: DLRM's memory-map day files start at {stem}_0_reordered.npz and need at "
                        f"least two days (the last is the test day); found {len(days)}")
    return days


def _day_files(path):
    stem = _DAY_FILE.match(os.path.basename(path)).group("stem")
    folder = os.path.dirname(os.path.abspath(path))
    days = day_files(path)
    sizes, counts_file = _fea_counts(folder, path)
    rows = sum(npz_shape(day, "X_cat")[0] for day in days[:-1])

    def blocks() -> Iterator[np.ndarray]:
        for day in days[:-1]:
            yield from npz_blocks(day, "X_cat", npz_shape(day, "X_cat")[0])

    return types.SimpleNamespace(sizes=sizes, rows=rows, blocks=blocks,
                                 source=f"days 0-{len(days) - 2} of {len(days)} ({stem}_<i>_reordered.npz; "
                                        f"sizes from {counts_file})")


def _bins(path):
    if not path.endswith("_train.bin"):
        raise MLETError(f"{path}: not the training split; give the <stem>_train.bin beside it")
    width = 1 + NDENSE_CRITEO + NCAT_CRITEO
    size = os.path.getsize(path)
    if size % (4 * width):
        raise MLETError(f"{path}: {size} bytes is not a whole number of {width}-field int32 rows")
    sizes, counts_file = _fea_counts(os.path.dirname(os.path.abspath(path)), path)
    data = np.memmap(path, dtype=np.int32, mode="r").reshape(-1, width) if size else np.zeros((0, width), np.int32)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(data), CHUNK):
            yield np.asarray(data[start:start + CHUNK, 1 + NDENSE_CRITEO:])

    return types.SimpleNamespace(sizes=sizes, rows=len(data), blocks=blocks,
                                 source=f"the {len(data)} rows of {os.path.basename(path)} (sizes from {counts_file})")


def kaggle_train_rows(path: StrPath, total: int) -> Tuple[int, str]:
    """How many leading rows DLRM trains on: all days but the last (``kaggle_days``)."""
    days, source = kaggle_days(path, total)
    return sum(days[:-1]), source


def read_row_ranges(path: StrPath, name: str, ranges: Iterable[Tuple[int, int]]) -> np.ndarray:
    """Rows ``[start, stop)`` for each of ``ranges`` (in file order) of a 2-D or 1-D .npz member, in one
    array: sliced from a memory map when the member is stored, else read through once in blocks."""
    with zipfile.ZipFile(path) as archive:
        stored = archive.getinfo(name + ".npy").compress_type == zipfile.ZIP_STORED
    if stored:
        data = npz_memmap(path, name)
        return np.concatenate([np.asarray(data[a:b]) for a, b in ranges])
    archive, handle = _npz_member(path, name)
    with archive, handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
        width = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        parts, at = [], 0
        for a, b in ranges:
            skip = (a - at) * width
            while skip > 0:  # a zip stream skips by reading, in bounded pieces
                skip -= len(handle.read(min(skip, 1 << 26)))
            parts.append(np.frombuffer(handle.read((b - a) * width), dtype=dtype).reshape((b - a,) + tuple(shape[1:])))
            at = b
        return np.concatenate(parts)


def _npz_member(path, name):
    """``(archive, stream)`` of an .npz member, both for the caller to close."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise MLETError(f"{path}: cannot read {name} ({error})") from None
    try:
        return archive, archive.open(name + ".npy")
    except KeyError:
        archive.close()
        raise MLETError(f"{path}: no {name} array") from None


def _npy_header(handle, path, name):
    """``(shape, dtype)`` of a 2-D C-order .npy stream, left at its first value."""
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(handle)
    if len(shape) != 2 or (fortran and shape[1] > 1):
        raise MLETError(f"{path}: {name} must be a C-order rows x tables array, got shape {shape}")
    return shape, dtype


def npz_shape(path: StrPath, name: str) -> Tuple[int, ...]:
    archive, handle = _npz_member(path, name)
    with archive, handle:
        return _npy_header(handle, path, name)[0]


def npz_blocks(path: StrPath, name: str, rows: int) -> Iterator[np.ndarray]:
    """The first ``rows`` rows of a 2-D .npz member, ``CHUNK`` at a time: never the whole array."""
    archive, handle = _npz_member(path, name)
    with archive, handle:
        shape, dtype = _npy_header(handle, path, name)
        width = shape[1] * dtype.itemsize
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            data = handle.read(count * width)
            if len(data) != count * width:
                raise MLETError(f"{path}: {name} ends early")
            yield np.frombuffer(data, dtype=dtype).reshape(count, shape[1])


def npz_memmap(path: StrPath, name: str) -> np.ndarray:
    """A read-only memory map of an .npz member, which must be stored, not compressed.

    A stored member's ``.npy`` bytes lie in the file as they are, after the
    member's local header and the ``.npy`` header, so no byte is read or
    copied until it is used (``dlrm-mlet synth --processed`` writes such files;
    DLRM's own preprocessing compresses its members: ``store_npz`` rewrites one).
    """
    archive, handle = _npz_member(path, name)
    with archive, handle:
        info = archive.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise MLETError(f"{path}: {name} is compressed and cannot be memory-mapped")
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        header = handle.tell()
    with open(path, "rb") as raw:  # the local header's own name and extra lengths can differ from the directory's
        raw.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(raw.read(4), dtype="<u2")
    offset = info.header_offset + 30 + int(name_length) + int(extra_length) + header
    if not np.prod(shape, dtype=np.int64):
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


def is_stored(path: StrPath, names: Iterable[str]) -> bool:
    """Whether every member ``names`` of the .npz at ``path`` is stored (not compressed)."""
    with zipfile.ZipFile(path) as archive:
        return all(archive.getinfo(name + ".npy").compress_type == zipfile.ZIP_STORED for name in names)


def store_npz(source: StrPath, target: StrPath, progress: Optional[Callable[[int], object]] = None) -> None:
    """Rewrite the .npz ``source`` with its members stored, not compressed, into ``target`` (atomically).

    Members are copied in blocks, never loaded whole (Criteo-Kaggle's ``X_cat``
    is 4.8 GB uncompressed).
    """
    def write(tmp: str) -> None:
        with zipfile.ZipFile(source) as archive, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
            for info in archive.infolist():
                with archive.open(info) as member, out.open(info.filename, "w", force_zip64=True) as copy:
                    while True:
                        block = member.read(1 << 24)
                        if not block:
                            break
                        copy.write(block)
                        if progress is not None:
                            progress(len(block))

    atomic_write(target, write)
