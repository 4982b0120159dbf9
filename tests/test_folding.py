import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from dlrm_mlet import MLETEmbeddingBag, MLETError, fold_model, fold_state_dict
from dlrm_mlet.core.folding import fold_weight, mlet_prefixes, mlet_table_bytes


class TinyDLRM(nn.Module):
    """DLRM's module layout: emb_l tables, then bottom and top MLPs."""

    def __init__(self, rows=(40, 7, 300), d=4, k=16):
        super().__init__()
        self.emb_l = nn.ModuleList(MLETEmbeddingBag(n, d, k) for n in rows)
        self.bot_l = nn.Sequential(nn.Linear(3, d), nn.ReLU())
        self.top_l = nn.Sequential(nn.Linear(d * (len(rows) + 1), 1), nn.Sigmoid())

    def forward(self, dense, offsets, indices):
        ly = [e(i, o) for e, i, o in zip(self.emb_l, indices, offsets)]
        return self.top_l(torch.cat([self.bot_l(dense)] + ly, dim=1))


def batch(model, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(size, 3, generator=g)
    offsets = [torch.arange(size) * 2 for _ in model.emb_l]
    indices = [torch.randint(0, e.num_embeddings, (2 * size,), generator=g) for e in model.emb_l]
    return dense, offsets, indices


def test_fold_model_swaps_every_table_in_place_and_keeps_predictions():
    model = TinyDLRM()
    inputs = batch(model)
    before = model(*inputs)
    tables = list(model.emb_l)
    assert fold_model(model) is model
    assert all(type(e) is nn.EmbeddingBag for e in model.emb_l)
    assert all(e is not t for e, t in zip(model.emb_l, tables))
    assert torch.allclose(model(*inputs), before, atol=1e-6)
    folded = list(model.emb_l)
    assert fold_model(model) is model and list(model.emb_l) == folded  # nothing left to fold


def test_fold_model_changes_nothing_when_one_table_is_not_finite():
    model = TinyDLRM()
    with torch.no_grad():
        model.emb_l[2].proj.weight[0, 0] = float("inf")
    with pytest.raises(MLETError, match=r"^emb_l\.2: "):
        fold_model(model)
    assert all(isinstance(e, MLETEmbeddingBag) for e in model.emb_l)


def test_fold_model_folds_a_shared_table_once():
    shared = MLETEmbeddingBag(10, 2, 4)
    model = nn.ModuleDict({"a": shared, "b": shared})
    assert fold_model(model) is model
    assert model["a"] is model["b"] and type(model["a"]) is nn.EmbeddingBag


def test_fold_model_of_a_bare_table_returns_the_plain_table():
    bag = MLETEmbeddingBag(10, 2, 4, mode="mean", sparse=False)
    plain = fold_model(bag)
    assert type(plain) is nn.EmbeddingBag and plain.mode == "mean" and not plain.sparse
    assert torch.allclose(plain.weight, bag.table.weight @ bag.proj.weight.t())


def test_fold_state_dict_gives_the_stock_keys_and_leaves_the_rest_alone():
    model = TinyDLRM()
    sd = model.state_dict()
    keys_before = list(sd)
    folded = fold_state_dict(sd)
    assert list(sd) == keys_before  # input untouched
    assert list(folded) == [
        "emb_l.0.weight", "emb_l.1.weight", "emb_l.2.weight",
        "bot_l.0.weight", "bot_l.0.bias", "top_l.0.weight", "top_l.0.bias",
    ]
    for i in range(3):
        expected = sd[f"emb_l.{i}.table.weight"] @ sd[f"emb_l.{i}.proj.weight"].t()
        assert torch.allclose(folded[f"emb_l.{i}.weight"], expected, atol=1e-7)
    assert folded["bot_l.0.weight"] is sd["bot_l.0.weight"]
    # The folded state dict loads, strictly, into the plain model of width d.
    plain = TinyDLRM()
    fold_model(plain)
    plain.load_state_dict(folded, strict=True)
    inputs = batch(model)
    assert torch.allclose(plain(*inputs), model(*inputs), atol=1e-6)


def test_fold_state_dict_only_folds_complete_pairs():
    sd = {"a.table.weight": torch.ones(3, 2), "b.proj.weight": torch.ones(1, 2), "c.weight": torch.ones(1)}
    assert mlet_prefixes(sd) == []
    assert list(fold_state_dict(sd)) == list(sd)


def test_fold_state_dict_refuses_a_pair_next_to_a_plain_weight():
    sd = {"e.table.weight": torch.ones(3, 2), "e.proj.weight": torch.ones(1, 2), "e.weight": torch.ones(3, 1)}
    with pytest.raises(MLETError, match="both an MLET pair and a plain"):
        fold_state_dict(sd)


def test_table_bytes():
    model = TinyDLRM(rows=(100, 10), d=4, k=16)
    now, folded = mlet_table_bytes(model.state_dict())
    assert now == 4 * (100 * 16 + 10 * 16 + 2 * 4 * 16)
    assert folded == 4 * (100 + 10) * 4


def test_fold_weight_is_blockwise_exact_for_any_block_size():
    a, b = torch.randn(1001, 32), torch.randn(5, 32)
    full = fold_weight(a, b, "t")
    tiny_blocks = fold_weight(a, b, "t", block_bytes=1)
    assert torch.equal(full, tiny_blocks)
    assert torch.allclose(full, a @ b.t(), atol=1e-5)


def test_fold_weight_accepts_finite_rows_whose_sum_overflows():
    """The finiteness check sums each block first; an overflowing sum must not reject finite rows."""
    a, b = torch.zeros(6, 2), torch.tensor([[1.0, 0.0]])
    a[1:4, 0] = 3e38  # three finite rows; their sum is inf in float32
    folded = fold_weight(a, b, "t")
    assert torch.isfinite(folded).all() and folded[2, 0] == 3e38
    a[4, 1], b[0, 1] = 1.0, float("nan")
    with pytest.raises(MLETError, match="t: folded row 0 is not finite"):
        fold_weight(a, b, "t")  # 0 * nan is nan: every row, the first named


def test_fold_weight_names_a_shape_mismatch():
    with pytest.raises(MLETError, match=r"emb_l\.0: cannot fold a \(5, 8\) table with a \(4, 9\)"):
        fold_weight(torch.zeros(5, 8), torch.zeros(4, 9), "emb_l.0")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fold_extra_memory_is_bounded(dtype):
    """Peak RSS beyond the input tables and the folded table stays under 64 MiB.

    Measured in a fresh process (ru_maxrss is a high-water mark). A bfloat16
    table is the case where an unchunked fold would convert the whole table to
    float32 first: 2M x 64 rows would cost 512 MiB extra.
    """
    code = textwrap.dedent(f"""
        import resource, torch
        from dlrm_mlet.core.folding import fold_weight
        torch.set_num_threads(1)
        n, k, d = 2_000_000, 64, 16
        a = torch.empty(n, k, dtype=torch.{dtype}).uniform_()
        b = torch.rand(d, k)
        fold_weight(a[:10], b, "warmup")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w = fold_weight(a, b, "t")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) * 1024 - w.numel() * w.element_size())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip())
    assert extra <= 64 * 2**20, f"fold used {extra / 2**20:.1f} MiB beyond the tables"
