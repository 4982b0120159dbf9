"""``dlrm-mlet synth --processed``: the generator's rows as DLRM's processed Kaggle file, checked against
the text path through our preprocessing (an independent route to the same file) and against the law."""

import json
import os
import zipfile

import numpy as np
import pytest

from dlrm_mlet.cli import main
from dlrm_mlet.data.days import day_sizes
from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED, preprocess_kaggle
from dlrm_mlet.data.processed import npz_memmap, training_split
from dlrm_mlet.errors import MLETError
from dlrm_mlet.tools import synth, synth_law
from dlrm_mlet.tools.synth_model import table_sizes
from dlrm_mlet.tools.synth_processed import write_processed

OPTIONS = dict(seed=3, scale=0.002, rank=4, support="published")


def load(folder):
    with np.load(os.path.join(folder, KAGGLE_PROCESSED)) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same 6,000 rows written as text (then preprocessed as DLRM would) and as the processed file."""
    text, processed = tmp_path_factory.mktemp("text"), tmp_path_factory.mktemp("processed")
    synth.write_synthetic(text, 6000, progress=False, **OPTIONS)
    preprocess_kaggle(str(text / "train.txt"), quiet=True)
    info = write_processed(processed, 6000, progress=False, **OPTIONS)
    return load(text), load(processed), info, processed


def test_the_processed_file_is_what_preprocessing_the_text_gives(both):
    """Labels and dense values equal; each table's values the same partition of the rows (numbered
    otherwise: DLRM numbers by first appearance, the generator by id), so the same table sizes."""
    reference, made, _, _ = both
    assert np.array_equal(made["y"], reference["y"]) and made["y"].dtype == np.int32
    assert np.array_equal(made["X_int"], reference["X_int"])
    assert np.array_equal(made["counts"], reference["counts"])
    for f in range(26):
        pairs = np.unique(np.stack([made["X_cat"][:, f], reference["X_cat"][:, f]]), axis=1)
        assert pairs.shape[1] == made["counts"][f]  # a bijection between the two numberings


def test_every_row_of_every_table_is_used_and_the_days_are_dlrms(both):
    _, made, info, folder = both
    assert (made["X_cat"].min(0) == 0).all() and (made["X_cat"].max(0) + 1 == made["counts"]).all()
    with np.load(folder / "train_day_count.npz") as days:
        assert list(days["total_per_file"]) == day_sizes(6000)
    assert info["table_sizes"] == list(made["counts"])
    split = training_split(str(folder / KAGGLE_PROCESSED))
    assert split.rows == sum(day_sizes(6000)[:-1])


def test_members_are_stored_and_memory_map_to_the_same_arrays(both):
    _, made, _, folder = both
    path = str(folder / KAGGLE_PROCESSED)
    with zipfile.ZipFile(path) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    for name, array in made.items():
        mapped = npz_memmap(path, name)
        assert isinstance(mapped, np.memmap) and np.array_equal(mapped, array)


def test_the_same_arguments_give_the_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_processed(a, 3000, progress=False, **OPTIONS)
    write_processed(b, 3000, progress=False, **OPTIONS)
    for name in (KAGGLE_PROCESSED, "train_day_count.npz", "synth_prob.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    info = json.loads((a / "synth.json").read_text())
    assert info["rows"] == 3000 and 0.6 < info["test"]["oracle_auc"] < 1


def test_calibrated_supports_see_about_the_published_number_of_values(tmp_path):
    """At scale s and Criteo's sample count times s, a calibrated table sees about its size in values
    (the law's expectation), where the published support sees far fewer."""
    scale = 0.001
    rows = round(synth_law.CRITEO_SAMPLES * scale)
    info = write_processed(tmp_path, rows, seed=0, scale=scale, rank=2, support="calibrated", progress=False)
    sizes = table_sizes(scale)
    for f in (2, 3, 11, 15, 20):  # the tables of millions of rows at full size
        assert 0.85 * sizes[f] < info["table_sizes"][f] < 1.15 * sizes[f] + 2, (f, info["table_sizes"][f], sizes[f])
    published = write_processed(tmp_path / "p", rows, seed=0, scale=scale, rank=2, support="published",
                                progress=False)
    assert published["table_sizes"][2] < 0.8 * sizes[2]


def test_an_existing_file_is_refused_and_text_refuses_supports_beyond_31_bits(tmp_path, capsys):
    write_processed(tmp_path, 500, progress=False, **OPTIONS)
    before = (tmp_path / KAGGLE_PROCESSED).read_bytes()
    with pytest.raises(MLETError, match="exists; pass --force"):
        write_processed(tmp_path, 700, progress=False, **OPTIONS)
    assert (tmp_path / KAGGLE_PROCESSED).read_bytes() == before
    assert main(["synth", str(tmp_path / "t"), "--rows", "100", "--scale", "1", "--support", "calibrated"]) == 2
    assert "--processed" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "t"), "--rows", "100", "--processed", "--days", "24"]) == 2
