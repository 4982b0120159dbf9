"""Streaming, numpy-2-safe Criteo preprocessing for DLRM's Terabyte and memory-map paths.

DLRM's own ``data_utils.getCriteoAdData`` fails on numpy 2 without
``--max-ind-range`` (int32 overflow, upstream #394) and holds whole days (as
float64) in memory. ``preprocess_criteo`` writes the files DLRM's loaders read,
with the values and dtypes numpy 1 DLRM writes, and draws from numpy's global
RNG exactly as DLRM does (same calls, same order, same amounts), so the files
are identical and the draws that follow (model init) match stock too:

* always: ``<stem>_day_count.npz`` (kept rows per day, int64),
  ``<stem>_fea_count.npz`` (table sizes, int32) and ``<stem>_fea_dict_<j>.npz``
  (``unique``: the raw key of each index of table j, int32, what serving needs);
* ``--memory-map``: ``<npz>_<i>_reordered.npz`` per day (X_cat, X_int, y, all
  float64 as DLRM's float scratch makes them), after DLRM's two-pass shuffle:
  rows of the training days dealt into day buckets by ``randint`` (with DLRM's
  scalar redraws when a bucket is full), then each training day permuted;
* otherwise: the processed file (X_cat float64, X_int and y int32, counts);
* ``--mlperf-bin-loader``: ``<processed stem>_{train,test,val}.bin``, int32
  rows ``[y, X_int, X_cat]`` as ``numpy_to_binary`` writes them.

Stems as DLRM names them: Terabyte ``DIR/day`` gives ``DIR/day_<i>`` inputs
and ``DIR/day_day_count.npz``, ``DIR/day_<i>_reordered.npz``; Kaggle
``DIR/train.txt`` gives ``DIR/train_day_count.npz``, ``DIR/train_day_<i>_reordered.npz``.
DLRM's other scratch (``day_<i>.npz``, ``_processed``, ``_intermediate_*``,
Kaggle's split text files) is kept in a hidden temporary folder beside the
output, in compact int32 form, and removed at the end; final files are renamed
into place when everything is written, the file DLRM takes as "done" last.

Memory. It does not grow with the line count: rows stream in blocks of
16,384 through raw int32 scratch files (160 bytes a row on disk, one day's
worth per day), appended to and read back with plain file reads. What does
grow: the 26 key tables (``KeyTable``: a dict, about 120 bytes per distinct
value, or with ``--max-ind-range N`` a dense N-entry int32 lookup once that is
smaller: the table sizes, inherent), and with ``--memory-map`` the rows of one
day at a time: a bucket byte per row in the first pass, then DLRM's int64
permutation (8 bytes per row) in the second. The second pass reads the day's
scratch file at random, through a mapping whose pages are dropped after every
4,096 rows: fast while that file (160 bytes per row) fits the page cache,
disk-bound beyond.
"""

import mmap
import os
import shutil
import tempfile
import zipfile

import numpy as np

from .data import _lines, _open_text, _save_npz, count_lines, day_sizes, parse_criteo_block, parse_criteo_line
from ..errors import MLETError
from ..progress import progress_bar

BLOCK = 1 << 14  # rows per streamed block
FIELDS = 40  # y, 13 dense, 26 categorical: one int32 scratch row, the .bin row layout


def criteo_layout(data_set, raw_path, processed_path=""):
    """Every path DLRM derives from ``--raw-data-file`` and ``--processed-data-file``."""
    days, out = (7, "kaggleAdDisplayChallenge_processed") if data_set == "kaggle" else (24, "terabyte_processed")
    d_path = os.path.dirname(os.path.abspath(raw_path))
    base = os.path.basename(raw_path)
    d_file = base.split(".")[0] if data_set == "kaggle" else base
    npz = os.path.join(d_path, d_file + "_day" if data_set == "kaggle" else d_file)
    processed = os.path.abspath(processed_path) if processed_path else os.path.join(d_path, out + ".npz")
    stem = os.path.join(os.path.dirname(processed), os.path.basename(processed).split(".")[0])
    inputs = [raw_path] if data_set == "kaggle" else [f"{raw_path}_{i}" for i in range(days)]
    return {
        "days": days, "dir": d_path, "inputs": inputs, "processed": processed,
        "day_count": os.path.join(d_path, d_file + "_day_count.npz"),
        "fea_count": os.path.join(d_path, d_file + "_fea_count.npz"),
        "fea_dict": [os.path.join(d_path, f"{d_file}_fea_dict_{j}.npz") for j in range(26)],
        "reordered": [f"{npz}_{i}_reordered.npz" for i in range(days)],
        "bins": {s: f"{stem}_{s}.bin" for s in ("train", "test", "val")},
    }


def preprocess_criteo(data_set, raw_path, processed_path="", max_ind_range=-1, sub_sample_rate=0.0,
                      memory_map=False, randomize="total", bins=False, quiet=False):
    """Write DLRM's preprocessed files for ``data_set`` (``kaggle`` or ``terabyte``); returns the layout.

    ``bins`` (memory-map only) also writes the ``--mlperf-bin-loader`` files.
    DLRM always preprocesses with ``data_split="train"``; that is what is done here.
    """
    layout = criteo_layout(data_set, raw_path, processed_path)
    work = _workdir(layout["dir"])
    try:
        scratch, kept, tables = _parse(layout, work, max_ind_range, sub_sample_rate, quiet)
        finals = {}
        for j, table in enumerate(tables):
            finals[layout["fea_dict"][j]] = _staged(work, f"fea_dict_{j}.npz", unique=table.keys())
        counts = np.array([len(t) for t in tables], dtype=np.int32)
        finals[layout["fea_count"]] = _staged(work, "fea_count.npz", counts=counts)
        finals[layout["day_count"]] = _staged(work, "day_count.npz", total_per_file=np.array(kept, dtype=np.int64))
        if not memory_map:
            finals[layout["processed"]] = _write_processed(os.path.join(work, "processed.npz"), scratch, kept,
                                                           counts)
        else:
            for i, path in enumerate(_shuffle(scratch, kept, work, randomize, bins)):
                finals[layout["reordered"][i]] = path
            if bins:  # train.bin last: with test.bin and the counts, DLRM's sign that all is done
                for split in ("val", "test", "train"):
                    finals[layout["bins"][split]] = os.path.join(work, f"{split}.bin")
        for final, path in finals.items():
            os.replace(path, final)
    except OSError as error:
        raise MLETError(f"cannot preprocess {raw_path}: {error.strerror or error}; nothing was written") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return layout


def reordered_to_bins(layout):
    """The ``.bin`` files from existing ``_reordered.npz`` files, streamed (no RNG draws).

    What DLRM's ``ensure_dataset_preprocessed`` does when only the .bin files
    are missing, without loading a whole day.
    """
    work = _workdir(layout["dir"])
    try:
        paths = {s: os.path.join(work, f"{s}.bin") for s in ("train", "test", "val")}
        with open(paths["train"], "wb") as train:
            for path in layout["reordered"][:-1]:
                for rows in _npz_rows(path):
                    train.write(rows.tobytes())
        with zipfile.ZipFile(layout["reordered"][-1]) as archive:
            shape, _, handle = _npy_reader(archive, "y")
            handle.close()
        _split_test(_npz_rows(layout["reordered"][-1]), shape[0], paths)
        for split in ("val", "test", "train"):
            os.replace(paths[split], layout["bins"][split])
    except OSError as error:
        raise MLETError(f"cannot write {layout['bins']['train']}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def uses_bin_files(args):
    """Whether DLRM will read the ``--mlperf-bin-loader`` files (its own condition)."""
    return bool(args.mlperf_logging and args.memory_map and args.data_set == "terabyte"
                and args.mlperf_bin_loader)


def ensure_preprocessed(args):
    """Before DLRM's loaders: write what they will read unless DLRM would find it done.

    DLRM's own signs of "done": every ``_reordered.npz`` (memory map), the
    processed file (otherwise), and the .bin files with the counts (bin
    loader). When only the .bin files are missing they are made from the
    reordered files, as DLRM does, with no new RNG draws.
    """
    layout = criteo_layout(args.data_set, args.raw_data_file, args.processed_data_file)
    bins = uses_bin_files(args)
    if not args.memory_map:
        args.processed_data_file = layout["processed"]  # DLRM's default "" never counts as done
        done = os.path.exists(layout["processed"])
    else:
        done = all(os.path.exists(p) for p in layout["reordered"])
    if not done:
        print(f"Preprocessing {args.raw_data_file} (dlrm-mlet, {args.data_set})", flush=True)
        preprocess_criteo(args.data_set, args.raw_data_file, args.processed_data_file, args.max_ind_range,
                          args.data_sub_sample_rate, args.memory_map, args.data_randomize, bins)
    elif bins and not all(os.path.exists(p) for p in [layout["bins"]["train"], layout["bins"]["test"],
                                                       layout["fea_count"]]):
        print(f"Writing {layout['bins']['train']} from the reordered files (dlrm-mlet)", flush=True)
        reordered_to_bins(layout)
    return layout


# --------------------------------------------------------------------------- stages


def _workdir(directory):
    try:
        return tempfile.mkdtemp(prefix=".dlrm-mlet-criteo.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise MLETError(f"cannot write in {directory}: {error.strerror or error}") from None


def _staged(work, name, **arrays):
    """A small npz written into the work folder (DLRM's savez_compressed); returns its path."""
    path = os.path.join(work, name)
    _save_npz(path, **arrays)
    return path


def _blocks(path, rows, step=BLOCK):
    """The int32 rows of a scratch file, ``step`` at a time, read with plain reads.

    Scratch files are raw int32 rows of 40 fields (the .bin layout), written
    by appending and read by blocks: nothing is memory-mapped for long, so
    the process's resident memory does not grow with the files.
    """
    with open(path, "rb") as handle:
        for _ in range(0, rows, step):
            yield np.fromfile(handle, np.int32, step * FIELDS).reshape(-1, FIELDS)


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


def _parse(layout, work, max_ind_range, sub_sample_rate, quiet):
    """Parse every day into an int32 scratch file; returns (file per day, kept rows per day, key tables).

    Keys are numbered in order of first appearance over the kept rows, days in
    order: the order DLRM's ``convertDicts`` are filled and then enumerated.
    Sub-sampling draws one uniform per line of each day, before that day's
    lines, as DLRM's ``process_one_file`` does (drawn in blocks: the same stream).
    """
    if len(layout["inputs"]) == 1:  # Kaggle: one file, cut into 7 near-equal days
        total = count_lines(layout["inputs"][0]) if os.path.isfile(layout["inputs"][0]) else 0
        parts = [(layout["inputs"][0], n) for n in day_sizes(total, layout["days"])]
    else:
        parts = [(p, count_lines(p) if os.path.isfile(p) else 0) for p in layout["inputs"]]
    tables = [KeyTable(max_ind_range) for _ in range(26)]
    scratch, kept, handle, lines = [], [], None, None
    with progress_bar(sum(n for _, n in parts), "preprocess Criteo", quiet) as bar:
        try:
            for i, (path, size) in enumerate(parts):
                if handle is None or handle.name != path:
                    if handle is not None:
                        handle.close()
                    handle = _open_text(path)
                    lines = _lines(handle, path)
                path_i = os.path.join(work, f"processed_{i}.bin")
                with open(path_i, "wb") as rows:
                    n = _parse_day(lines, path, size, rows, tables, max_ind_range, sub_sample_rate, bar)
                scratch.append(path_i)
                kept.append(n)
        finally:
            if handle is not None:
                handle.close()
    if sum(kept) == 0:
        raise MLETError(f"{layout['inputs'][0]}: no rows; nothing was written")
    return scratch, kept, tables


def _parse_day(lines, path, size, rows, tables, max_ind_range, sub_sample_rate, bar):
    """Parse the next ``size`` lines of ``lines`` into the open scratch file ``rows``; returns the rows kept."""
    n = 0
    for start in range(0, size, BLOCK):
        count = min(BLOCK, size - start)
        draws = np.random.uniform(low=0.0, high=1.0, size=count) if sub_sample_rate > 0 else None
        numbered = [next(lines, (None, None)) for _ in range(count)]
        if numbered[-1][1] is None:
            raise MLETError(f"{path}: ended early; nothing was written")
        block, bad = parse_criteo_block([line for _, line in numbered], max_ind_range)
        if bad is not None:
            number, line = numbered[bad]
            try:
                parse_criteo_line(line, max_ind_range)
            except ValueError as error:
                raise MLETError(f"{path}:{number}: {error}; nothing was written") from None
        if draws is not None:
            block = block[(block[:, 0] != 0) | (draws >= sub_sample_rate)]
        if len(block):
            np.maximum(block[:, 1:14], 0, out=block[:, 1:14])  # DLRM clamps dense values at 0
            for j, table in enumerate(tables):
                block[:, 14 + j] = table.number(block[:, 14 + j])
            rows.write(block.astype(np.int32).tobytes())
            n += len(block)
        bar.update(count)
    return n


class KeyTable:
    """One categorical feature's keys, numbered in order of first appearance.

    The numbering DLRM's ``convertDicts`` give, with memory that does not grow
    with the row count, and less of it than DLRM's dicts at Terabyte scale.
    Keys start in a dict (about 120 bytes per distinct value). With
    ``--max-ind-range N`` keys lie in ``[0, N)``, so once a table holds more than
    N/30 distinct values (where a dense int32 lookup of N entries, 4 bytes
    each, becomes the smaller of the two) it moves to that lookup: at the
    MLPerf setting (N = 40M) a large table costs at most 160 MB instead of
    about 4.8 GB of dict. Without a cap keys span all of int32: dict it stays.
    """

    DENSE_BYTES_PER_KEY = 4
    DICT_BYTES_PER_KEY = 120  # measured: benchmarks/preprocess_memory.py

    def __init__(self, max_ind_range=-1):
        self._cap = max_ind_range
        self._lookup = None
        self._dict = {}
        self._keys = np.empty(1024, dtype=np.int32)  # key of each index, grown by doubling
        self._count = 0

    def __len__(self):
        return self._count

    def keys(self):
        """The key of each index, in index order (``_fea_dict``'s ``unique``)."""
        return self._keys[: self._count].copy()

    def number(self, keys):
        """The index of each key, new keys numbered in order of first appearance."""
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        if self._lookup is not None:
            ids = self._lookup[unique]
            new = np.flatnonzero(ids < 0)
        else:
            ids = np.fromiter((self._dict.get(k, -1) for k in unique.tolist()), dtype=np.int64, count=len(unique))
            new = np.flatnonzero(ids < 0)
        new = new[np.argsort(first[new], kind="stable")]  # first appearance within the block
        fresh = np.arange(self._count, self._count + len(new))
        ids[new] = fresh
        self._append(unique[new])
        if self._lookup is not None:
            self._lookup[unique[new]] = fresh
        else:
            self._dict.update(zip(unique[new].tolist(), fresh.tolist()))
            if self._cap > 0 and self._count * self.DICT_BYTES_PER_KEY > self._cap * self.DENSE_BYTES_PER_KEY:
                self._lookup = np.full(self._cap, -1, dtype=np.int32)
                self._lookup[self._keys[: self._count]] = np.arange(self._count, dtype=np.int32)
                self._dict = None
        return ids[inverse.reshape(-1)]

    def _append(self, keys):
        need = self._count + len(keys)
        if need > len(self._keys):
            grown = np.empty(max(need, 2 * len(self._keys)), dtype=np.int32)
            grown[: self._count] = self._keys[: self._count]
            self._keys = grown
        self._keys[self._count:need] = keys
        self._count = need


def first_pass_buckets(i, size, caps, fill, randomize):
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


def _shuffle(scratch, kept, work, randomize, bins):
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
            for a, rows in zip(range(0, kept[i], BLOCK), _blocks(scratch[i], kept[i])):
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
                ("X_cat", np.float64, (n, 26), (rows[:, 14:] for rows in _blocks(source, n))),
                ("X_int", np.float64, (n, 13), (rows[:, 1:14] for rows in _blocks(source, n))),
                ("y", np.float64, (n,), (rows[:, 0] for rows in _blocks(source, n))),
            ])
            if bins and j < days - 1:
                for rows in _blocks(source, n):
                    train_bin.write(rows.tobytes())
            elif bins:
                _split_test(_blocks(source, n), n, {s: os.path.join(work, f"{s}.bin") for s in ("test", "val")})
            _remove(source)
            yield path
    finally:
        if train_bin is not None:
            train_bin.close()


def _split_test(blocks, rows, paths):
    """The test day's .bin files from its row blocks: the first ceil(n/2) rows are test, the rest val."""
    middle, done = int(np.ceil(rows / 2.0)), 0
    with open(paths["test"], "wb") as test, open(paths["val"], "wb") as val:
        for block in blocks:
            cut = min(max(middle - done, 0), len(block))
            test.write(block[:cut].tobytes())
            val.write(block[cut:].tobytes())
            done += len(block)


def _write_processed(path, scratch, kept, counts):
    """DLRM's non-memory-map file: all days concatenated, X_cat float64, X_int and y int32."""
    total = sum(kept)

    def blocks(columns):
        for path, n in zip(scratch, kept):
            for rows in _blocks(path, n):
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
    # Deflate level 1, not savez_compressed's 6: about 3x faster on this data, and np.load
    # reads either (the zip bytes were never the same as stock's anyway).
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as archive:
        for name, dtype, shape, blocks in members:
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                          "fortran_order": False, "shape": tuple(int(s) for s in shape)}
                np.lib.format.write_array_header_1_0(member, header)
                for block in blocks:
                    member.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return path


def _npz_rows(path):
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
