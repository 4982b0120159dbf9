"""Half-precision k-wide tables (core/half.py): rounding, forward, the optimizers' rules, resume."""

import io
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dlrm_mlet import MLETEmbedding, MLETEmbeddingBag, MLETError, fold_model, to_mlet
from dlrm_mlet.core import half, rounding
from dlrm_mlet.engine.grouped import grouped_forward

HALVES = [torch.float16, torch.bfloat16]


def bracket(values, dtype):
    """For each float32 value, the largest and smallest ``dtype`` values around it, found by
    listing every one of the 65,536 bit patterns (independent of the code under test)."""
    every = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    every = torch.unique(every[every.isfinite()])  # sorted; -0 and +0 are one value
    hi = every[torch.searchsorted(every, values, right=False).clamp(max=len(every) - 1)]
    lo = every[(torch.searchsorted(every, values, right=True) - 1).clamp(min=0)]
    return lo, hi


@pytest.mark.parametrize("dtype", HALVES)
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(dtype):
    """Mean of many roundings == x (to 5 standard errors), each result one of x's two neighbours."""
    g = torch.Generator().manual_seed(0)
    tiny = torch.finfo(dtype).tiny
    values = torch.tensor([1.0 + 1e-4, -3.14159, 1e-3, 7.77e-6, tiny / 3, -tiny * 1.5,
                           6.5e4 if dtype == torch.float16 else 1e30, 0.1, 2.0 ** -20])
    lo, hi = bracket(values, dtype)
    draws = 40000
    rounded = rounding.stochastic_round(values.repeat(draws, 1), dtype, g).float()
    assert ((rounded == lo) | (rounded == hi)).all()
    p = torch.where(hi > lo, (values - lo) / (hi - lo), 0.0).double()  # representable: always itself
    se = (hi - lo).double() * (p * (1 - p) / draws).sqrt()
    error = (rounded.double().mean(dim=0) - values.double()).abs()
    assert (error <= 5 * se + 1e-7 * values.double().abs()).all(), (error, se)


@pytest.mark.parametrize("dtype", HALVES)
def test_representable_values_nan_and_inf_are_kept(dtype):
    x = torch.tensor([0.0, -0.0, 1.0, -2.5, 0.5, float("inf"), -float("inf"), float("nan")])
    out = rounding.stochastic_round(x, dtype, torch.Generator().manual_seed(1)).float()
    assert torch.equal(out[:7], x[:7]) and out[7].isnan()


def test_the_fused_fp16_rounding_gives_the_eager_bits_for_every_kind_of_float():
    """Random float32 bit patterns: normals, subnormals, zeros, infinities, NaNs, huge values."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-2**31, 2**31 - 1, (4096, 96), generator=g, dtype=torch.int32).view(torch.float32)
    x[:2048] *= 2.0 ** -100  # and many near fp16's subnormal range
    noise = rounding._noise(x, g)
    dtype = torch.float16
    fused, eager = rounding._FUSED[dtype], rounding._round_fp16
    got, expected = fused(x, noise), eager(x, noise)
    if shutil.which("c++") or shutil.which("g++"):
        assert fused.compiled is not eager  # torch.compile really ran here
    nan = expected.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16))


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=-6e4, max_value=6e4, allow_nan=False, width=32), st.sampled_from(HALVES))
def test_a_rounding_never_leaves_the_bracket(value, dtype):
    x = torch.full((64,), value)
    lo, hi = bracket(x, dtype)
    out = rounding.stochastic_round(x, dtype, torch.Generator().manual_seed(2)).float()
    assert ((out == lo) | (out == hi)).all()


def test_small_updates_survive_stochastic_rounding_and_vanish_with_nearest():
    """The reason for it: 1e-4 steps on a row near 1.0 (fp16 spacing 1e-3) are all lost when rounded to nearest."""
    np.random.seed(0)
    bag = MLETEmbeddingBag(4, 2, 8, table_dtype="fp16")
    with torch.no_grad():
        bag.table.weight.fill_(1.0)
        bag.proj.weight.fill_(0.0)
        bag.proj.weight[0, 0] = 1.0
    opt = torch.optim.SGD(bag.parameters(), lr=1e-4)
    for _ in range(500):
        opt.zero_grad()
        (-bag(torch.tensor([0]), torch.tensor([0]))[0, 0]).backward()  # d/dA[0,0] = -1: +1e-4 a step
        bag.proj.weight.grad = None
        opt.step()
    assert abs(bag.table.weight[0, 0].item() - 1.05) < 0.01  # 500 * 1e-4, within SR noise
    assert torch.equal(bag.table.weight[1:], torch.ones(3, 8, dtype=torch.float16))  # untouched rows
    nearest = torch.ones(1, dtype=torch.float16)
    for _ in range(500):
        nearest = (nearest.float() + 1e-4).half()
    assert nearest.item() == 1.0


def pair(dtype, mode="sum", **options):
    """A half MLET bag and a float32 one holding exactly the same numbers."""
    np.random.seed(3)
    halved = MLETEmbeddingBag(50, 4, 16, mode=mode, table_dtype=dtype, **options)
    full = MLETEmbeddingBag(50, 4, 16, mode=mode, **options)
    with torch.no_grad():
        full.table.weight.copy_(halved.table.weight.float())
        full.proj.weight.copy_(halved.proj.weight)
    return halved, full


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("case", ["sum", "mean", "weighted", "padding", "last-offset", "2d"])
def test_half_bag_outputs_are_the_float32_bag_of_the_same_numbers(dtype, case):
    options = {"padding_idx": 3} if case == "padding" else {}
    options.update(include_last_offset=True) if case == "last-offset" else None
    halved, full = pair(dtype, "mean" if case in ("mean", "padding") else "sum", **options)
    idx = torch.tensor([3, 1, 3, 7, 7, 2, 9, 3])
    off = torch.tensor([0, 3, 5, 8]) if case == "last-offset" else torch.tensor([0, 3, 3, 5])
    weights = torch.rand(8) if case == "weighted" else None
    if case == "2d":
        args = (idx.view(2, 4),)
    else:
        args = (idx, off)
    out_h = halved(*args, per_sample_weights=weights)
    out_f = full(*args, per_sample_weights=weights)
    assert out_h.dtype == torch.float32
    assert torch.allclose(out_h, out_f, atol=1e-6), (out_h - out_f).abs().max()


@pytest.mark.parametrize("dtype", HALVES)
def test_half_lookup_matches_and_its_padding_row_never_moves(dtype):
    np.random.seed(4)
    halved = MLETEmbedding(30, 4, 16, padding_idx=0, table_dtype=dtype)
    full = MLETEmbedding(30, 4, 16, padding_idx=0)
    with torch.no_grad():
        full.table.weight.copy_(halved.table.weight.float())
        full.proj.weight.copy_(halved.proj.weight)
    idx = torch.tensor([[0, 5, 5], [2, 0, 9]])
    assert torch.allclose(halved(idx), full(idx), atol=1e-6)
    opt = torch.optim.Adagrad(halved.parameters(), lr=0.5)
    halved(idx).pow(2).sum().backward()
    opt.step()
    assert torch.equal(halved.table.weight[0], torch.zeros(16, dtype=dtype))
    assert not torch.equal(halved.table.weight[5].float(), full.table.weight[5])


def rwsadagrad_class():
    """DLRM's own row-wise Adagrad, from the DLRM checkout the tests use (skipped without one)."""
    root = os.environ.get("DLRM_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dlrm-mlet", "dlrm")
    if not os.path.exists(os.path.join(root, "optim", "rwsadagrad.py")):
        pytest.skip(f"no DLRM checkout at {root}")
    sys.path.insert(0, root)
    try:
        from optim.rwsadagrad import RWSAdagrad
    finally:
        sys.path.remove(root)
    return RWSAdagrad


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.3),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.3, lr_decay=0.01, initial_accumulator_value=0.1),
    "rwsadagrad": lambda params: rwsadagrad_class()(params, lr=0.3),
}


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_rule_is_its_optimizer_on_the_float32_table(monkeypatch, dtype, name):
    """Before rounding, every step is exactly what the optimizer does to a float32 table with the same
    numbers and state (repeated rows summed first), over several steps."""
    captured = []
    original = rounding.stochastic_round
    monkeypatch.setattr(half, "stochastic_round", lambda x, d, g: (captured.append(x.clone()), original(x, d, g))[1])
    halved, full = pair(dtype)
    opt_h, opt_f = OPTIMIZERS[name](halved.parameters()), OPTIMIZERS[name](full.parameters())
    rng = np.random.default_rng(0)
    for _ in range(4):
        idx = torch.from_numpy(rng.integers(0, 12, 24))  # repeats within and across bags
        off = torch.tensor([0, 5, 11, 20])
        for bag, opt in ((halved, opt_h), (full, opt_f)):
            opt.zero_grad()
            bag(idx, off).pow(2).sum().backward()
        rows = torch.unique(idx)
        before = halved.table.weight.detach().clone()
        opt_h.step()
        opt_f.step()
        assert torch.allclose(captured[-1], full.table.weight[rows], atol=1e-6, rtol=1e-5)
        untouched = torch.ones(50, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(halved.table.weight[untouched], before[untouched])
        assert torch.allclose(halved.proj.weight, full.proj.weight, atol=1e-5)
        with torch.no_grad():  # keep the float32 twin on the rounded numbers
            full.table.weight.copy_(halved.table.weight.float())
            full.proj.weight.copy_(halved.proj.weight)


def test_rowwise_state_is_one_float_per_row_and_adagrads_one_per_element():
    for name, shape in (("rwsadagrad", (50,)), ("adagrad", (50, 16))):
        halved, _ = pair(torch.float16)
        opt = OPTIMIZERS[name](halved.parameters())
        halved(torch.tensor([1, 2]), torch.tensor([0, 1])).sum().backward()
        opt.step()
        (state,) = [half.float32_state(s) for p, s in opt.state.items() if p is halved.table.weight]
        accumulator = state["momentum" if name == "rwsadagrad" else "sum"]
        assert accumulator.dtype == torch.float32 and tuple(accumulator.shape) == shape
        assert "sum" not in opt.state[halved.table.weight]  # torch's own half-precision accumulator is dropped


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rwsadagrad"])
def test_optimizer_state_dict_round_trip_resumes_exactly(name):
    """Save model + optimizer after 3 steps, load into fresh ones, 3 more: bit for bit the 6-step run."""
    def make():
        np.random.seed(5)
        model = nn.ModuleList([MLETEmbeddingBag(40, 4, 16, table_dtype="fp16"),
                               MLETEmbeddingBag(40, 4, 16, table_dtype="fp16")])
        return model, OPTIMIZERS[name](model.parameters())

    def train(model, opt, steps, start):
        for s in range(start, start + steps):
            g = torch.Generator().manual_seed(s)
            idx = [torch.randint(0, 40, (16,), generator=g) for _ in model]
            off = [torch.arange(0, 16, 2) for _ in model]
            opt.zero_grad()
            out = grouped_forward(list(model), idx, off, [None, None])
            sum(o.pow(2).sum() for o in out).backward()
            opt.step()

    reference, ref_opt = make()
    train(reference, ref_opt, 6, 0)
    model, opt = make()
    train(model, opt, 3, 0)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = make()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    if name == "rwsadagrad":  # DLRM's class re-zeroes loaded dense state unless told (dlrm/resume.py does so)
        resumed_opt.momentum_initialized = True
    train(resumed, resumed_opt, 3, 3)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_grouped_and_module_paths_agree_on_half_tables():
    np.random.seed(6)
    tables = [MLETEmbeddingBag(30, 4, 16, table_dtype="bf16") for _ in range(3)]
    idx = [torch.tensor([1, 2, 2, 29]) for _ in tables]
    off = [torch.tensor([0, 1, 3]) for _ in tables]
    grouped = grouped_forward(tables, idx, off, [None] * 3)
    single = [t(i, o) for t, i, o in zip(tables, idx, off)]
    for a, b in zip(grouped, single):
        assert torch.allclose(a, b, atol=1e-6)


def test_an_optimizer_without_a_rule_is_refused_in_one_line():
    bag, _ = pair(torch.float16)
    opt = torch.optim.Adam(bag.parameters())
    bag(torch.tensor([1]), torch.tensor([0])).sum().backward()
    with pytest.raises(MLETError, match=r"^fp16 MLET tables are updated by dlrm-mlet's stochastic-rounding "
                                        r"rules for SGD, Adagrad and DLRM's RWSAdagrad, not Adam") as error:
        opt.step()
    assert "\n" not in str(error.value)
    opt = torch.optim.SGD(bag.parameters(), lr=0.1, momentum=0.9)
    bag(torch.tensor([1]), torch.tensor([0])).sum().backward()
    with pytest.raises(MLETError, match="SGD with momentum is not supported"):
        opt.step()


def test_half_tables_take_half_the_bytes_and_fold_to_float32():
    np.random.seed(7)
    model = nn.Sequential(nn.EmbeddingBag(1000, 8, mode="sum"))
    to_mlet(model, 64, table_dtype="bf16")
    bag = model[0]
    assert bag.table.weight.dtype == torch.bfloat16 and bag.proj.weight.dtype == torch.float32
    full = MLETEmbeddingBag(1000, 8, 64)
    assert bag.table.weight.nbytes * 2 == full.table.weight.nbytes
    expected = bag.table.weight.float() @ bag.proj.weight.T
    fold_model(model)
    assert type(model[0]) is nn.EmbeddingBag and model[0].weight.dtype == torch.float32
    assert torch.allclose(model[0].weight, expected, atol=1e-6)


def test_bad_table_dtypes_are_refused():
    with pytest.raises(MLETError, match="table dtype must be one of fp32, fp16, bf16, got 'int8'"):
        MLETEmbeddingBag(10, 2, 8, table_dtype="int8")
    with pytest.raises(MLETError, match="got torch.int8"):
        to_mlet(nn.Embedding(10, 4), 8, table_dtype=torch.int8)


def test_inspect_shows_each_tables_dtype_and_its_real_bytes(tmp_path):
    from dlrm_mlet.tools.inspection import inspect_checkpoint

    np.random.seed(8)
    model = nn.ModuleDict({"emb_l": nn.ModuleList([MLETEmbeddingBag(300, 4, 32, table_dtype="fp16"),
                                                   nn.EmbeddingBag(200, 4)])})
    path = tmp_path / "m.pt.mlet"
    torch.save({"state_dict": model.state_dict()}, path)
    info = inspect_checkpoint(str(path))
    half_table, plain = info["tables"]
    assert half_table["dtype"] == "float16" and plain["dtype"] == "float32"
    assert half_table["bytes"] == 300 * 32 * 2 + 4 * 32 * 4  # fp16 table, fp32 projection
    assert half_table["folded_bytes"] == 300 * 4 * 4  # folds to float32


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rwsadagrad"])
def test_packed_half_tables_update_bit_for_bit_as_one_table_at_a_time(dtype, kind, dlrm_dir):
    """engine/half_update.py's one-pass update of a packed group equals half.py's table-by-table one exactly."""
    import copy
    import importlib.util

    from dlrm_mlet.core.bag import MLETEmbeddingBag
    from dlrm_mlet.engine import fused, packing
    from dlrm_mlet.engine.grouped import grouped_forward

    torch.manual_seed(0)
    alone = [MLETEmbeddingBag(n, 4, 16, table_dtype=dtype) for n in (50, 70, 9)]
    packed = copy.deepcopy(alone)
    buffer = packing.Buffer(sum(t.num_embeddings for t in packed), 16, half.table_dtype(dtype))
    for t in packed:
        buffer.place(t.table.weight)
    if kind == "rwsadagrad":
        spec = importlib.util.spec_from_file_location("rwsadagrad", f"{dlrm_dir}/optim/rwsadagrad.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        make = lambda ps: module.RWSAdagrad(ps, lr=0.05)  # noqa: E731
    elif kind == "adagrad":
        make = lambda ps: torch.optim.Adagrad(ps, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)  # noqa: E731
    else:
        make = lambda ps: torch.optim.SGD(ps, lr=0.5)  # noqa: E731
        fused.use(alone + packed, "torch")  # DLRM's default with SGD: projections at the step too
    opts = [make([p for t in ts for p in t.parameters()]) for ts in (alone, packed)]
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        indices = [torch.randint(0, t.num_embeddings, (20,), generator=g) for t in alone]
        offsets = [torch.tensor([0, 2, 2, 5, 9, 12, 15, 19])] * 3
        upstream = [torch.randn(8, 4, generator=g) for _ in alone]
        for ts, opt in ((alone, opts[0]), (packed, opts[1])):
            opt.zero_grad()
            sum((o * u).sum() for o, u in zip(grouped_forward(ts, indices, offsets, [None] * 3), upstream)).backward()
            opt.step()
    assert packing.flat_indices([t.table.weight for t in packed], [torch.tensor([0])] * 3) is not None  # still packed
    for a, b in zip(alone, packed):
        assert torch.equal(a.table.weight, b.table.weight) and torch.equal(a.proj.weight, b.proj.weight)
        sa, sb = opts[0].state[a.table.weight], opts[1].state[b.table.weight]
        assert set(sa) == set(sb)
        for key in sa:  # bitwise: the generator's state, stored in the table's dtype, holds NaN patterns
            x, y = torch.as_tensor(sa[key]), torch.as_tensor(sb[key])
            assert x.dtype == y.dtype and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), key
