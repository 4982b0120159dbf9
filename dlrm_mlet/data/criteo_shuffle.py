"""Criteo preprocessing, last stage: DLRM's two-pass shuffle and the npz/.bin files it writes.

With ``--memory-map`` DLRM deals the training days' rows into day buckets
(``randint``, with scalar redraws when a bucket is full), then permutes each
training day; ``first_pass_buckets`` and ``shuffle_days`` make the same RNG
draws in the same order, on int32 scratch files instead of whole days in memory.
The npz files are written member by member and block by block (``_write_npz``),
and read back the same way (``npz_rows``), so no day is ever held whole.
"""

import mmap
import os
import zipfile
from typing import BinaryIO, Iterable, Iterator, Mapping, Sequence, Union, cast

import numpy as np

from ..errors import MLETError
from ..files import StrPath
from .criteo_text import BLOCK, FIELDS, scratch_blocks


def first_pass_buckets(i: int, size: int, caps: np.ndarray, fill: np.ndarray, randomize: str) -> np.ndarray:
    """DLRM's first shuffle pass for day ``i``: the day bucket of each of its rows (uint8).

    DLRM draws ``randint(0, days - 1, size)`` for the whole day (the last day
    too, whose rows stay in place), then walks the rows: a row whose bucket is
    full redraws one scalar ``randint`` until it finds room. Here the draws
    are accepted in windows up to the first row that would overflow a bucket,
    where DLRM's scalar redraws are done, so the RNG stream is the same.
    ``fill`` (rows already in each bucket) is updated in place.
    """
    days = len(caps)
    buckets = np.full(size, i, np.uint8)
    if randomize != "total":
        fill[i] += size
        return buckets
    for start in range(0, size, BLOCK):
        buckets[start:start + BLOCK] = np.random.randint(low=0, high=days - 1, size=min(BLOCK, size - start))
    if i == days - 1:
        buckets[:] = i
        fill[i] += size
        return buckets
    k, window = 0, 1024
    while k < size:
        segment = buckets[k:k + window]
        stop = len(segment)
        for b in range(days - 1):
            hits = np.flatnonzero(segment[:stop] == b)
            if len(hits) > caps[b] - fill[b]:
                stop = int(hits[caps[b] - fill[b]])
        fill += np.bincount(segment[:stop], minlength=days)
        k += stop
        if stop < len(segment):
            p = int(buckets[k])
            while fill[p] >= caps[p]:
                p = np.random.randint(low=0, high=days - 1)
            buckets[k], fill[p], k = p, fill[p] + 1, k + 1
            window = max(256, 2 * stop)
        else:
            window = min(1 << 20, 2 * window)
    return buckets


def shuffle_days(scratch: Sequence[StrPath], kept: Sequence[int], work: StrPath, randomize: str,
                 bins: bool) -> Iterator[str]:
    """DLRM's memory-map concatenation (two-pass shuffle); yields each day's reordered file.

    First pass: every day's rows dealt into the day buckets, kept in arrival
    order within a bucket. Second pass: each training day permuted (the test
    day is not), written as DLRM's float64 ``_reordered.npz`` and, for the bin
    loader, appended to the .bin files.
    """
    days = len(kept)
    caps, fill = np.array(kept, dtype=np.int64), np.zeros(days, dtype=np.int64)
    inter = [os.path.join(work, f"intermediate_{j}.bin") for j in range(days)]
    handles = [open(path, "wb") for path in inter]
    try:  # within a bucket rows arrive in order, so each intermediate file is only appended to
        for i in range(days):
            buckets = first_pass_buckets(i, kept[i], caps, fill, randomize)
            for a, rows in zip(range(0, kept[i], BLOCK), scratch_blocks(scratch[i], kept[i])):
                dest = buckets[a:a + BLOCK]
                for j in np.unique(dest):
                    handles[j].write(rows[dest == j].tobytes())
            del buckets
            _remove(scratch[i])
    finally:
        for handle in handles:
            handle.close()
    train_bin = open(os.path.join(work, "train.bin"), "wb") if bins else None
    try:
        for j in range(days):
            n, source = kept[j], inter[j]
            if randomize in ("day", "total") and j < days - 1:
                perm = np.random.permutation(n)
                source = os.path.join(work, f"reordered_{j}.bin")
                with open(source, "wb") as out:
                    _gather(inter[j], n, perm, out)
                del perm
                _remove(inter[j])
            path = os.path.join(work, f"reordered_{j}.npz")
            _write_npz(path, [
                ("X_cat", np.float64, (n, 26), (rows[:, 14:] for rows in scratch_blocks(source, n))),
                ("X_int", np.float64, (n, 13), (rows[:, 1:14] for rows in scratch_blocks(source, n))),
                ("y", np.float64, (n,), (rows[:, 0] for rows in scratch_blocks(source, n))),
            ])
            if bins and j < days - 1:
                for rows in scratch_blocks(source, n):
                    cast(BinaryIO, train_bin).write(rows.tobytes())  # open whenever bins
            elif bins:
                split_test(scratch_blocks(source, n), n, {s: os.path.join(work, f"{s}.bin") for s in ("test", "val")})
            _remove(source)
            yield path
    finally:
        if train_bin is not None:
            train_bin.close()


def _gather(source, rows, perm, out, step=4096):
    """Write ``source[perm]`` (rows of a scratch file) to the open file ``out``.

    The only random access: through a read-only mapping whose pages are
    dropped from this process after each block (the page cache keeps them).
    """
    if rows == 0:
        return
    with open(source, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        mapped.madvise(mmap.MADV_RANDOM)
        view = np.frombuffer(mapped, np.int32).reshape(rows, FIELDS)
        for a in range(0, rows, step):
            out.write(view[perm[a:a + step]].tobytes())
            mapped.madvise(mmap.MADV_DONTNEED)
        del view


def split_test(blocks: Iterable[np.ndarray], rows: int, paths: Mapping[str, StrPath]) -> None:
    """The test day's .bin files from its row blocks: the first ceil(n/2) rows are test, the rest val."""
    middle, done = int(np.ceil(rows / 2.0)), 0
    with open(paths["test"], "wb") as test, open(paths["val"], "wb") as val:
        for block in blocks:
            cut = min(max(middle - done, 0), len(block))
            test.write(block[:cut].tobytes())
            val.write(block[cut:].tobytes())
            done += len(block)


def write_processed(path: StrPath, scratch: Sequence[StrPath], kept: Sequence[int], counts: np.ndarray) -> StrPath:
    """DLRM's non-memory-map file: all days concatenated, X_cat float64, X_int and y int32."""
    total = sum(kept)

    def blocks(columns: Union[int, slice]) -> Iterator[np.ndarray]:
        for path, n in zip(scratch, kept):
            for rows in scratch_blocks(path, n):
                yield rows[:, columns]

    _write_npz(path, [
        ("X_cat", np.float64, (total, 26), blocks(slice(14, None))),
        ("X_int", np.int32, (total, 13), blocks(slice(1, 14))),
        ("y", np.int32, (total,), blocks(0)),
        ("counts", np.int32, counts.shape, [counts]),
    ])
    return path


def _write_npz(path, members):
    """An ``np.savez_compressed`` file written member by member, block by block.

    An .npz is a zip of .npy files: each member is a .npy header followed by
    its C-order bytes, deflated as savez_compressed deflates them.
    """
    # Deflate level 1, not savez_compressed's 6: each day is written once and read back once,
    # so compressing harder costs more than it saves; np.load reads either (the zip bytes
    # were never the same as stock's anyway).
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as archive:
        for name, dtype, shape, blocks in members:
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                          "fortran_order": False, "shape": tuple(int(s) for s in shape)}
                np.lib.format.write_array_header_1_0(member, header)
                for block in blocks:
                    member.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return path


def npz_rows(path: StrPath) -> Iterator[np.ndarray]:
    """Int32 ``[y, X_int, X_cat]`` blocks of a ``_reordered.npz``, read member by member."""
    with zipfile.ZipFile(path) as archive:
        members = {name: _npy_reader(archive, name) for name in ("y", "X_int", "X_cat")}
        n = members["y"][0][0]
        for a in range(0, n, BLOCK):
            count = min(BLOCK, n - a)
            parts = [_read_block(members[name], count) for name in ("y", "X_int", "X_cat")]
            yield np.concatenate([parts[0].reshape(-1, 1), parts[1], parts[2]], axis=1).astype(np.int32)
        for _, _, handle in members.values():
            handle.close()


def bins_from_reordered(reordered: Sequence[StrPath], paths: Mapping[str, StrPath]) -> None:
    """DLRM's ``.bin`` files (``paths``: train, test, val) from its ``_reordered.npz`` files, streamed."""
    with open(paths["train"], "wb") as train:
        for path in reordered[:-1]:
            for rows in npz_rows(path):
                train.write(rows.tobytes())
    with zipfile.ZipFile(reordered[-1]) as archive:
        shape, _, handle = _npy_reader(archive, "y")
        handle.close()
    split_test(npz_rows(reordered[-1]), shape[0], paths)


def _npy_reader(archive, name):
    handle = archive.open(name + ".npy")
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(handle)
    if fortran and len(shape) > 1 and shape[1] > 1:
        raise MLETError(f"{archive.filename}: {name} is stored in Fortran order; cannot stream it")
    return shape, dtype, handle


def _read_block(member, count):
    shape, dtype, handle = member
    width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    data = np.frombuffer(handle.read(count * width * dtype.itemsize), dtype=dtype)
    return data.reshape((count,) + tuple(shape[1:]))


def _remove(path):
    if os.path.exists(path):
        os.remove(path)
