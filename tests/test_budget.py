"""The training-memory budget planner (core/budget.py) and ``dlrm-mlet plan`` (tools/plan.py)."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrm_mlet.cli import main
from dlrm_mlet.core.budget import (
    DEFAULT_RULE,
    RULES,
    candidates,
    format_bytes,
    format_plan,
    parse_size,
    plan_hidden_dims,
    plan_tables,
    training_bytes,
    training_cost,
)
from dlrm_mlet.core.options import hidden_dim_for, parse_hidden_dims
from dlrm_mlet.data.avazu import AVAZU_COLUMNS, preprocess_avazu
from dlrm_mlet.errors import MLETError
from dlrm_mlet.data.frequency import count_rows
from dlrm_mlet.data.frequency import rare_rows as rare_rows_of
from dlrm_mlet.data.processed import kaggle_train_rows
from dlrm_mlet.tools.plan import read_processed


def rare_rows(blocks, sizes, max_ind_range=-1):
    return rare_rows_of(count_rows(blocks, sizes, max_ind_range))

MiB, GiB = 2**20, 2**30


# --------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("optimizer, dtype, expected", [
    # plain: float32 n x d whatever the table dtype; Adagrad one float per element, RWSAdagrad one per row
    ("sgd", "fp32", (1000 * 16 * 4, 0)),
    ("sgd", "fp16", (1000 * 16 * 4, 0)),
    ("adagrad", "bf16", (1000 * 16 * 4, 1000 * 16 * 4)),
    ("rwsadagrad", "fp32", (1000 * 16 * 4, 1000 * 4)),
    ("rowwise_adagrad", "fp32", (1000 * 16 * 4, 1000 * 4)),
])
def test_plain_table_bytes(optimizer, dtype, expected):
    assert training_cost(1000, 16, 0, dtype, optimizer) == expected
    assert training_bytes(1000, 16, 0, dtype, optimizer) == sum(expected)


@pytest.mark.parametrize("optimizer, dtype, weights, state", [
    ("sgd", "fp32", 512_000 + 8192, 0),  # n*k*4 table + d*k*4 projection
    ("sgd", "fp16", 256_000 + 8192, 0),
    ("sgd", "bf16", 256_000 + 8192, 0),
    ("adagrad", "fp32", 520_192, 512_000 + 8192),  # float32 accumulators for table and projection
    ("adagrad", "fp16", 264_192, 512_000 + 8192),
    ("rwsadagrad", "fp32", 520_192, 4000 + 8192),  # one per table row, a full one for the dense projection
    ("rwsadagrad", "bf16", 264_192, 4000 + 8192),
])
def test_mlet_table_bytes(optimizer, dtype, weights, state):
    cost = training_cost(1000, 16, 128, dtype, optimizer)
    assert (cost.weights, cost.state) == (weights, state)
    assert training_bytes(1000, 16, 128, dtype, optimizer) == weights + state


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "adam"}, "--optimizer: expected one of sgd, adagrad, rwsadagrad, got 'adam'"),
    ({"table_dtype": "fp8"}, "--mlet-table-dtype: expected one of fp32, fp16, bf16, got 'fp8'"),
])
def test_bytes_refuse_unknown_names(kwargs, message):
    with pytest.raises(MLETError) as error:
        training_bytes(10, 4, 8, **kwargs)
    assert str(error.value) == message


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("text, nbytes", [
    ("24GiB", 24 * GiB), ("24gib", 24 * GiB), ("500MB", 500_000_000), ("500 mb", 500_000_000),
    ("1.5GiB", 1610612736), (".5KiB", 512), ("2TB", 2 * 10**12), ("1TiB", 2**40), ("7KB", 7000),
    ("123", 123), ("123B", 123), ("1.9", 1), ("0", 0),
])
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["abc", "", "-1GB", "1e3", "1.2.3GB", "12 GiBs", "GiB", "1 g"])
def test_parse_size_refuses(text):
    with pytest.raises(MLETError) as error:
        parse_size(text)
    assert str(error.value) == f"--mlet-memory-budget: expected a size such as 24GiB or 500MB, got {text!r}"


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, MiB, int(121.07 * MiB), 3 * GiB // 2, 2**41)] == \
        ["512 B", "1.5 KiB", "1 MiB", "121.07 MiB", "1.5 GiB", "2 TiB"]


# --------------------------------------------------------------------------- plans


def test_candidates_are_multiples_between_d_and_k_max():
    assert candidates(16, 64) == [16, 24, 32, 40, 48, 56, 64]
    assert candidates(4, 30) == [8, 16, 24, 30]  # k_max always allowed; never below d
    assert candidates(13, 13) == [13]
    assert candidates(16, 64, multiple=32) == [32, 64]


def test_uniform_plan_by_hand():
    rows = [1000, 500, 10]
    total = lambda k: sum(training_bytes(n, 16, k) for n in rows)  # noqa: E731
    plan = plan_hidden_dims(rows, 16, 256, total(64) + 100)
    assert plan.hidden_dims == (64, 64, 64) and plan.hidden_dim_arg == "64"
    assert plan.total == total(64) and plan.budget == total(64) + 100
    # a small table below --mlet-min-rows stays plain, so the list form is needed
    plan = plan_hidden_dims(rows, 16, 256, 10 * GiB, min_rows=100)
    assert plan.hidden_dims == (256, 256, 0) and plan.hidden_dim_arg == "256-256-0"
    assert plan.costs[2] == training_cost(10, 16, 0)


def test_rare_rule_serves_the_highest_score_first():
    rows = [1000, 1000, 1000]
    budget = sum(training_bytes(n, 16, 0) for n in rows) + (training_bytes(1000, 16, 64) - training_bytes(1000, 16, 0))
    by_rare = plan_hidden_dims(rows, 16, 256, budget, rule="rare", rare=[5, 50, 7])
    assert by_rare.hidden_dims == (0, 64, 0) and by_rare.hidden_dim_arg == "0-64-0"
    by_rows = plan_hidden_dims([10, 1000, 100], 16, 256, budget, rule="rare")  # no score: rows
    assert by_rows.hidden_dims[1] >= 64 and by_rows.scored_by == "rows"


def test_half_tables_take_their_saving_first():
    # fp16 k=d is cheaper than a plain fp32 table: the budget below plain still plans
    rows = [100_000, 100_000]
    plain = sum(training_bytes(n, 16, 0) for n in rows)
    plan = plan_hidden_dims(rows, 16, 256, plain - 1000, table_dtype="fp16", rule="rare")
    assert plan.total <= plain - 1000 and min(plan.hidden_dims) >= 16


def test_errors_are_one_line():
    rows = [100_000, 20]
    with pytest.raises(MLETError) as error:
        plan_hidden_dims(rows, 4, 64, MiB)
    assert str(error.value) == ("--mlet-memory-budget 1 MiB is below what the tables take even plain "
                                "(1.53 MiB with sgd)")
    plain = sum(training_bytes(n, 4, 0) for n in rows)
    more = training_bytes(20, 4, 8) - training_bytes(20, 4, 0)  # d=4: the cheapest k is 8, the small table
    with pytest.raises(MLETError) as error:
        plan_hidden_dims(rows, 4, 64, plain + more - 1, rule="rare")
    assert str(error.value) == (f"--mlet-memory-budget {format_bytes(plain + more - 1)} fits no MLET table: the "
                                f"tables take 1.53 MiB plain, and the cheapest MLET table (table 1, k=8) needs "
                                f"{format_bytes(more)} more")
    assert plan_hidden_dims(rows, 4, 64, plain + more, rule="rare").hidden_dims == (0, 8)
    with pytest.raises(MLETError, match=r"^--mlet-memory-budget .* fits no uniform k: .* k=8 on all 2 MLET "
                                        r"tables needs .* more \(the rare rule gives k to some tables only\)$"):
        plan_hidden_dims(rows, 4, 64, plain + more)
    for kwargs, message in [
        (dict(d=32), "--mlet-hidden-dim 16 is below the embedding width d=32: nothing to plan"),
        (dict(d=[8, 32]), "--mlet-hidden-dim 16 is below the embedding width d=32 (table 1): nothing to plan"),
        (dict(rule="best"), "--rule: expected one of uniform, rare, got 'best'"),
        (dict(min_rows=10**6), "--mlet-min-rows 1000000 leaves no table for MLET (the largest has 100000 rows)"),
        (dict(rare=[1]), "1 rare-row scores for 2 tables"),
    ]:
        args = dict(rows=rows, d=16, k_max=16, budget=GiB) | kwargs
        with pytest.raises(MLETError) as error:
            plan_hidden_dims(**args)
        assert str(error.value) == message and "\n" not in message


def test_plan_tables_for_torchrec_configs():
    config = lambda name, n, d: types.SimpleNamespace(name=name, num_embeddings=n, embedding_dim=d)  # noqa: E731
    configs = [config("user", 50_000, 64), config("item", 20_000, 16), config("tiny", 3, 16)]
    plan, hidden = plan_tables(configs, "64MiB", 128, min_rows=10)
    assert list(hidden) == ["user", "item", "tiny"] and hidden["tiny"] == 0
    assert hidden["user"] == hidden["item"] >= 64 and plan.dims == (64, 16, 16) and plan.total <= 64 * MiB
    plan, hidden = plan_tables(configs, "64MiB", 128, rule="rare", rare={"item": 9, "user": 1})
    assert hidden["item"] == 128 and plan.scored_by == "rare rows"
    text = format_plan(plan, [c.name for c in configs])
    assert text.splitlines()[-1] == f"hidden_dim={json.dumps(hidden)}"
    assert text.splitlines()[-2] == f"--mlet-hidden-dim={plan.hidden_dim_arg}"
    with pytest.raises(MLETError, match="^rare-row scores name unknown tables: other$"):
        plan_tables(configs, "64MiB", 128, rule="rare", rare={"other": 1})
    with pytest.raises(MLETError, match="^memory budget 1 KiB is below"):
        plan_tables(configs, "1KiB", 128)


def test_format_plan_lines():
    plan = plan_hidden_dims([1000, 5], 16, 64, GiB, min_rows=10)
    lines = format_plan(plan).splitlines()
    assert len(lines) == 1 + 2 + 2 and lines[2].split()[3] == "plain"
    assert lines[-2].startswith(f"total {format_bytes(plan.total)} of 1 GiB budget (weights ")
    assert "1/2 MLET tables, fp32 tables, rule uniform" in lines[-2]
    assert lines[-1] == "--mlet-hidden-dim=64-0"


def _step_fits(plan, i, budget, ks):
    """Whether table i alone could take its next candidate within the budget."""
    k = plan.hidden_dims[i]
    higher = [c for c in ks if c > k]
    if not higher:
        return False
    return plan.total - plan.table_bytes[i] + training_bytes(plan.rows[i], plan.dims[i], higher[0], plan.table_dtype,
                                                               plan.optimizer) <= budget


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.sampled_from([1, 3, 40, 700, 5000, 80_000, 1_000_000]), min_size=1, max_size=8),
    d=st.sampled_from([4, 8, 13, 16]),
    k_extra=st.integers(0, 300),
    fraction=st.floats(0.8, 1.5),
    dtype=st.sampled_from(["fp32", "fp16", "bf16"]),
    optimizer=st.sampled_from(["sgd", "adagrad", "rwsadagrad"]),
    rule=st.sampled_from(RULES),
    multiple=st.sampled_from([1, 4, 8]),
    min_rows=st.sampled_from([0, 0, 50]),
    scores=st.lists(st.integers(0, 5), min_size=8, max_size=8) | st.none(),
)
def test_every_plan_fits_and_is_maximal(rows, d, k_extra, fraction, dtype, optimizer, rule, multiple, min_rows,
                                        scores):
    k_max = d + k_extra
    rare = scores[: len(rows)] if scores is not None else None
    plain = sum(training_bytes(n, d, 0, dtype, optimizer) for n in rows)
    top = sum(training_bytes(n, d, k_max, dtype, optimizer) for n in rows)
    budget = int(plain + fraction * (top - plain) * 0.5) if fraction > 1 else int(plain * fraction + (top - plain) *
                                                                                    fraction / 4)
    eligible = [i for i, n in enumerate(rows) if hidden_dim_for(i, n, (k_max,), min_rows)]
    kw = dict(table_dtype=dtype, optimizer=optimizer, rule=rule, min_rows=min_rows, rare=rare, multiple=multiple)
    try:
        plan = plan_hidden_dims(rows, d, k_max, budget, **kw)
    except MLETError as error:
        message = str(error)
        assert "\n" not in message
        if not eligible:
            assert "leaves no table for MLET" in message
            return
        ks = candidates(d, k_max, multiple)
        if rule == "uniform":  # no common k fits
            assert sum(training_bytes(n, d, ks[0] if i in eligible else 0, dtype, optimizer)
                       for i, n in enumerate(rows)) > budget
        else:  # not one table can take the cheapest MLET form
            floor = sum(min(training_bytes(n, d, 0, dtype, optimizer),
                            training_bytes(n, d, ks[0], dtype, optimizer) if i in eligible else 1 << 62)
                        for i, n in enumerate(rows))
            assert floor > budget or all(
                training_bytes(rows[i], d, ks[0], dtype, optimizer) - training_bytes(rows[i], d, 0, dtype, optimizer)
                > budget - plain for i in eligible)
        assert ("is below what the tables take even plain" in message) == (budget < plain)
        return
    ks = candidates(d, k_max, multiple)
    assert plan.total <= budget and plan.budget == budget
    assert plan.total == sum(training_bytes(n, d, k, dtype, optimizer) for n, k in zip(rows, plan.hidden_dims))
    assert any(plan.hidden_dims)
    for i, k in enumerate(plan.hidden_dims):
        assert k == 0 or (d <= k <= k_max and (k % multiple == 0 or k == k_max))
        if i not in eligible:
            assert k == 0
    # the list DLRM takes gives back every table's k
    dims = parse_hidden_dims(plan.hidden_dim_arg)
    assert [hidden_dim_for(i, n, dims, 0) for i, n in enumerate(rows)] == list(plan.hidden_dims)
    if rule == "uniform":
        assert len({plan.hidden_dims[i] for i in eligible}) == 1
        k = plan.hidden_dims[eligible[0]]
        higher = [c for c in ks if c > k]
        if higher:  # one more step for all would not fit
            assert sum(training_bytes(n, d, higher[0] if i in eligible else 0, dtype, optimizer)
                       for i, n in enumerate(rows)) > budget
    else:
        # no single table could have taken one more step
        assert not any(_step_fits(plan, i, budget, ks) for i in eligible)
        score = lambda i: rare[i] if rare is not None else rows[i]  # noqa: E731
        for i in eligible:  # of two identical tables, the one served first never gets less
            for j in eligible:
                if rows[i] == rows[j] and (score(i), -i) > (score(j), -j):
                    assert plan.hidden_dims[i] >= plan.hidden_dims[j]


def test_default_rule_is_a_known_rule():
    assert DEFAULT_RULE in RULES


# --------------------------------------------------------------------------- reading tables


def test_rare_rows_count_values_seen_1_to_10_times():
    x_cat = np.array([[0, 5]] * 11 + [[1, 5], [2, 6]], dtype=np.int32)  # table 0: row 0 x11, rows 1, 2 once
    blocks = [x_cat[:4], x_cat[4:]]
    assert rare_rows(iter(blocks), [4, 8]) == [2, 1]  # table 1: row 5 x12 (frequent), row 6 once
    assert rare_rows(iter([x_cat]), [4, 8], max_ind_range=4) == [2, 1]  # 5 % 4 and 6 % 4: rows 1 (x12), 2 (x1)


def test_kaggle_training_rows_are_all_days_but_the_last(tmp_path):
    path = tmp_path / "processed.npz"
    assert kaggle_train_rows(str(path), 70)[0] == 60  # DLRM's 7 near-equal days
    np.savez(tmp_path / "train_day_count.npz", total_per_file=np.array([30, 20, 20]))
    assert kaggle_train_rows(str(path), 70) == (50, "days from train_day_count.npz")


def _criteo_npz(path):
    """Three tables: table 0 large but seen often (5 values), 1 and 2 small, table 2's 300 values twice each."""
    rng = np.random.default_rng(0)
    rows = 700
    x_cat = np.stack([rng.integers(0, 5, rows), np.arange(rows) % 50, np.arange(rows) % 300], axis=1)
    np.savez_compressed(path, X_cat=x_cat.astype(np.int32), X_int=np.zeros((rows, 13), np.int32),
                        y=np.zeros(rows, np.int32), counts=np.array([40_000, 50, 300], np.int32))
    return path


def test_read_processed_npz(tmp_path):
    path = str(_criteo_npz(tmp_path / "kaggle_processed.npz"))
    counts, rare, note = read_processed(path, rare=True)
    assert counts == [40_000, 50, 300] and rare == [0, 0, 300]  # 600 training rows: each of 300 values twice
    assert note == "rare rows counted over the first 600 of 700 rows (7 near-equal days, as DLRM splits them)"
    assert read_processed(path) == (counts, None, "")
    with pytest.raises(MLETError, match="no such file or folder$"):
        read_processed(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(MLETError, match="no 'counts' array"):
        read_processed(str(tmp_path / "other.npz"))


# --------------------------------------------------------------------------- dlrm-mlet plan


def _run(*argv):
    return subprocess.run([sys.executable, "-m", "dlrm_mlet", "plan", *argv], capture_output=True, text=True)


def _printed_plan(stdout):
    lines = stdout.splitlines()
    arg = next(line for line in lines if line.startswith("--mlet-hidden-dim="))
    total = next(line for line in lines if line.startswith("total "))
    return arg.split("=", 1)[1], total


def test_plan_command_from_arch_embedding_size():
    rows = [1460, 583, 10131227, 2202608, 305, 24]
    out = _run("--budget", "4GiB", "--mlet-hidden-dim", "256", "--arch-sparse-feature-size", "16",
               "--arch-embedding-size", "-".join(map(str, rows)), "--mlet-min-rows", "100", "--optimizer", "adagrad")
    assert out.returncode == 0, out.stderr
    arg, total = _printed_plan(out.stdout)
    expected = plan_hidden_dims(rows, 16, 256, 4 * GiB, min_rows=100, optimizer="adagrad")
    assert arg == expected.hidden_dim_arg and arg.endswith("-0")
    assert total.startswith(f"total {format_bytes(expected.total)} of 4 GiB budget")
    assert len(out.stdout.splitlines()) == 1 + len(rows) + 2


def test_plan_command_from_a_processed_npz(tmp_path):
    path = _criteo_npz(tmp_path / "kaggle_processed.npz")
    per_table = [training_bytes(n, 8, 0) for n in (40_000, 50, 300)]
    budget = sum(per_table) + training_bytes(300, 8, 64) - per_table[2] + 100
    out = _run("--budget", str(budget), "--mlet-hidden-dim", "64", "--arch-sparse-feature-size", "8",
               "--processed-data-file", str(path), "--rule", "rare", "--quiet")
    assert out.returncode == 0, out.stderr
    assert _printed_plan(out.stdout)[0] == "0-0-64"  # the rare-heavy table first, though the smallest
    assert out.stdout.splitlines()[-1].startswith("rare rows counted over the first 600 of 700 rows")
    # by size (uniform rule, or no X_cat) the big table would have come first
    np.savez(tmp_path / "day_fea_count.npz", counts=np.array([40_000, 50, 300], np.int32))
    out = _run("--budget", "2MiB", "--mlet-hidden-dim", "64", "--arch-sparse-feature-size", "8",
               "--processed-data-file", str(tmp_path / "day_fea_count.npz"), "--rule", "rare")
    assert out.returncode == 0, out.stderr
    assert _printed_plan(out.stdout)[0].split("-")[0] != "0"
    assert out.stdout.splitlines()[-1] == "day_fea_count.npz holds no X_cat: tables ordered by rows"


def test_plan_command_from_an_avazu_cache(tmp_path):
    fields = ("1,0,14102100,1005,0,s,sd,sc,a,ad,ac,di,dip,dm,1,2,15706,320,50,1722,0,35,-1,79").split(",")
    lines = []
    for i in range(60):
        row = list(fields)
        row[0], row[5], row[12] = str(i), f"site{i % 3}", f"ip{i}"  # site_id: 3 values; device_ip: all rare
        lines.append(",".join(row))
    raw = tmp_path / "train.csv"
    raw.write_text(",".join(AVAZU_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    cache = preprocess_avazu(str(raw), str(tmp_path / "cache"), quiet=True)
    out = _run("--budget", "1GiB", "--mlet-hidden-dim", "32", "--arch-sparse-feature-size", "4",
               "--processed-data-file", cache, "--max-ind-range", "40")
    assert out.returncode == 0, out.stderr
    assert _printed_plan(out.stdout)[0] == "32"
    table_lines = out.stdout.splitlines()[1:22]
    ip = AVAZU_COLUMNS[3:].index("device_ip")
    assert table_lines[ip].split()[1] == "40"  # 60 values capped at --max-ind-range
    assert read_processed(cache, rare=True)[1][ip] == 48  # 48 training rows, each ip seen once


def test_plan_command_from_torchrec_tables(tmp_path):
    tables = [{"name": "user", "num_embeddings": 100_000, "embedding_dim": 64},
              {"name": "item", "num_embeddings": 5_000, "embedding_dim": 16}]
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(tables))
    out = _run("--budget", "200MiB", "--mlet-hidden-dim", "256", "--tables", str(path),
               "--mlet-table-dtype", "fp16", "--optimizer", "rowwise_adagrad")
    assert out.returncode == 0, out.stderr
    expected = plan_hidden_dims([100_000, 5_000], [64, 16], 256, 200 * MiB, table_dtype="fp16",
                                optimizer="rwsadagrad")
    assert _printed_plan(out.stdout)[0] == expected.hidden_dim_arg
    hidden = json.loads(out.stdout.splitlines()[-1].split("=", 1)[1])
    assert hidden == dict(zip(["user", "item"], expected.hidden_dims))
    assert out.stdout.splitlines()[1].split()[0] == "user"


def test_plan_command_bad_input_is_one_line(tmp_path, capsys):
    out = _run("--budget", "abc", "--mlet-hidden-dim", "64", "--arch-sparse-feature-size", "16",
               "--arch-embedding-size", "100-200")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "dlrm-mlet: error: --budget: expected a size such as 24GiB or 500MB, got 'abc'\n"
    (tmp_path / "t.json").write_text("[{}]")
    base = ["plan", "--budget", "1GiB", "--mlet-hidden-dim", "64"]
    for extra, message in [
        (["--arch-embedding-size", "100-200"], "--arch-sparse-feature-size D is needed: the model's embedding width"),
        (["--arch-sparse-feature-size", "16", "--arch-embedding-size", "100-x"],
         "--arch-embedding-size: expected dash-separated table sizes >= 1 such as 1460-583-10131227, got '100-x'"),
        (["--tables", str(tmp_path / "t.json")],
         f"{tmp_path / 't.json'}: table 0 lacks one of name, num_embeddings, embedding_dim"),
        (["--tables", str(tmp_path / "t.json"), "--arch-sparse-feature-size", "16"],
         "--arch-sparse-feature-size: the widths come from --tables; give one or the other"),
        (["--arch-sparse-feature-size", "16", "--arch-embedding-size", "100", "--optimizer", "adam"],
         "--optimizer: expected one of sgd, adagrad, rwsadagrad, got 'adam'"),
        (["--arch-sparse-feature-size", "16", "--arch-embedding-size", "100", "--max-ind-range", "x"],
         "--max-ind-range: expected an integer, got 'x'"),
        (["--arch-sparse-feature-size", "128", "--arch-embedding-size", "100"],
         "--mlet-hidden-dim 64 is below the embedding width d=128: nothing to plan"),
    ]:
        assert main(base + extra) == 2
        captured = capsys.readouterr()
        assert captured.err == f"dlrm-mlet: error: {message}\n" and captured.out == ""
    with pytest.raises(SystemExit) as exit_:  # no table source: argparse's one line
        main(base + ["--arch-sparse-feature-size", "16"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_plan_command_caps_tables_at_max_ind_range(capsys):
    assert main(["plan", "--budget", "1GiB", "--mlet-hidden-dim", "64", "--arch-sparse-feature-size", "16",
                 "--arch-embedding-size", "5000000-300", "--max-ind-range", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:3]] == ["1000", "300"] and lines[-1] == "--mlet-hidden-dim=64"

