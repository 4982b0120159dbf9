import numpy as np
import pytest
import torch

from dlrm_mlet import MLETEmbeddingBag, MLETError
from dlrm_mlet.core import init as init_module
from dlrm_mlet.tools.verify import random_bags


def bags(n, seed=1, count=64, max_bag=8):
    return random_bags(n, count, max_bag, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n,d,k", [(1, 2, 3), (50, 4, 64), (1000, 16, 256), (300, 8, 8)])
@pytest.mark.parametrize("mode,weighted", [("sum", False), ("mean", False), ("sum", True)])
def test_fold_gives_the_same_outputs(n, d, k, mode, weighted):
    bag = MLETEmbeddingBag(n, d, k, mode=mode)
    # Trained tables are not at their tiny init scale: make the check realistic.
    with torch.no_grad():
        bag.table.weight.normal_()
    indices, offsets, weights = bags(n)
    psw = weights if weighted else None
    expected = bag(indices, offsets, per_sample_weights=psw)
    folded = bag.fold()
    assert isinstance(folded, torch.nn.EmbeddingBag)
    assert folded.weight.shape == (n, d) and folded.mode == mode and folded.sparse
    got = folded(indices, offsets, per_sample_weights=psw)
    assert expected.shape == (64, d)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-5 * scale


def test_forward_takes_2d_input_like_embedding_bag():
    bag = MLETEmbeddingBag(20, 4, 16, mode="mean")
    x = torch.tensor([[1, 2, 3], [4, 5, 5]])
    assert torch.allclose(bag(x), bag.fold()(x), atol=1e-6)


def test_gradients_reach_both_factors_and_the_table_gets_sparse_ones():
    bag = MLETEmbeddingBag(100, 4, 32)
    indices, offsets, _ = bags(100)
    bag(indices, offsets).pow(2).sum().backward()
    assert bag.table.weight.grad.is_sparse
    assert not bag.proj.weight.grad.is_sparse
    dense_table_grad = bag.table.weight.grad.to_dense()
    assert dense_table_grad.abs().sum() > 0 and bag.proj.weight.grad.abs().sum() > 0
    # Rows that no bag used get no gradient.
    unused = torch.ones(100, dtype=torch.bool)
    unused[indices] = False
    assert dense_table_grad[unused].abs().sum() == 0


def test_dense_gradients_when_not_sparse():
    bag = MLETEmbeddingBag(10, 2, 8, sparse=False)
    bag(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    assert not bag.table.weight.grad.is_sparse
    assert not bag.fold().sparse


def test_table_init_is_dlrms_draw_from_numpys_global_rng(monkeypatch):
    n, k = 1000, 24
    np.random.seed(7)
    bound = np.sqrt(1 / n)
    expected = np.random.uniform(low=-bound, high=bound, size=(n, k)).astype(np.float32)
    # Small draw blocks: the chunked draw must continue the same stream.
    monkeypatch.setattr(init_module, "_INIT_CHUNK_ELEMS", 100)
    np.random.seed(7)
    bag = MLETEmbeddingBag(n, 4, k)
    assert np.array_equal(bag.table.weight.detach().numpy(), expected)
    assert bag.table.weight.abs().max() <= bound


def test_same_seed_same_table_different_seed_different_table():
    np.random.seed(3)
    a = MLETEmbeddingBag(50, 4, 16)
    np.random.seed(3)
    b = MLETEmbeddingBag(50, 4, 16)
    np.random.seed(4)
    c = MLETEmbeddingBag(50, 4, 16)
    assert torch.equal(a.table.weight, b.table.weight) and torch.equal(a.proj.weight, b.proj.weight)
    assert not torch.equal(a.table.weight, c.table.weight)


@pytest.mark.parametrize(
    "spec,std", [("normal", 0.25), ("normal-0.05", 0.05), ("xavier", (2 / (16 + 512)) ** 0.5)]
)
def test_projection_init_scales(spec, std):
    w = MLETEmbeddingBag(10, 16, 512, proj_init=spec).proj.weight.detach()
    assert w.shape == (16, 512)
    assert abs(w.mean()) < 0.1 * std
    assert w.std().item() == pytest.approx(std, rel=0.05)


@pytest.mark.parametrize("d,k", [(4, 64), (16, 16)])
def test_orthogonal_projection_has_orthonormal_rows(d, k):
    w = MLETEmbeddingBag(10, d, k, proj_init="orthogonal").proj.weight.detach().double()
    assert torch.allclose(w @ w.t(), torch.eye(d, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("spec", ["gaussian", "normal-", "normal-x", "normal--1", "normal-nan", ""])
def test_unknown_projection_init_is_refused(spec):
    with pytest.raises(MLETError, match="projection init"):
        MLETEmbeddingBag(10, 4, 8, proj_init=spec)


def test_max_mode_is_refused_at_construction():
    with pytest.raises(MLETError, match="mode='max'.*exact only for sum and mean"):
        MLETEmbeddingBag(10, 4, 8, mode="max")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises((MLETError, TypeError)):
        MLETEmbeddingBag(10, 4, bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fold_keeps_dtype(dtype):
    bag = MLETEmbeddingBag(30, 4, 16).to(dtype)
    folded = bag.fold()
    assert folded.weight.dtype == dtype
    exact = bag.table.weight.double() @ bag.proj.weight.double().t()
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    assert torch.allclose(folded.weight.double(), exact, atol=tol * float(exact.abs().max()))


def test_fold_refuses_non_finite_values_and_names_the_table():
    bag = MLETEmbeddingBag(30, 4, 16)
    with torch.no_grad():
        bag.table.weight[17, 3] = float("nan")
    with pytest.raises(MLETError, match=r"emb_l\.2: folded row 17 is not finite"):
        bag.fold("emb_l.2")


def test_from_weights_round_trip_and_shape_check():
    bag = MLETEmbeddingBag(30, 4, 16, mode="mean")
    again = MLETEmbeddingBag.from_weights(bag.table.weight, bag.proj.weight, mode="mean")
    x, o, _ = bags(30)
    assert torch.equal(again(x, o), bag(x, o))
    with pytest.raises(MLETError, match="hidden widths differ"):
        MLETEmbeddingBag.from_weights(torch.zeros(5, 8), torch.zeros(4, 9))


@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)])  # weights: sum only
@pytest.mark.parametrize("one_hot", [True, False])
def test_grouped_tables_match_the_modules_outputs_and_gradients(mode, one_hot, weighted):
    import copy

    from dlrm_mlet.engine.grouped import grouped_forward
    tables = [MLETEmbeddingBag(n, 4, 16, mode=mode) for n in (50, 70, 9)]
    tables.insert(1, torch.nn.EmbeddingBag(30, 4, mode=mode, sparse=True))  # plain tables are left alone
    for t in tables:
        with torch.no_grad():
            (t.table.weight if isinstance(t, MLETEmbeddingBag) else t.weight).normal_()
    twins = copy.deepcopy(tables)
    g = torch.Generator().manual_seed(3)
    if one_hot:
        indices = [torch.randint(0, t.num_embeddings, (8,), generator=g) for t in tables]
        offsets = [torch.arange(8) for _ in tables]
    else:
        indices = [torch.randint(0, t.num_embeddings, (20,), generator=g) for t in tables]
        offsets = [torch.tensor([0, 2, 2, 5, 9, 12, 15, 19]) for _ in tables]  # one empty bag
    weights = [torch.rand(i.shape, generator=g) if weighted else None for i in indices]
    expected = [t(i, o, per_sample_weights=w) for t, i, o, w in zip(tables, indices, offsets, weights)]
    got = grouped_forward(twins, indices, offsets, weights)
    upstream = [torch.randn(e.shape, generator=g) for e in expected]
    sum((e * u).sum() for e, u in zip(expected, upstream)).backward()
    sum((o * u).sum() for o, u in zip(got, upstream)).backward()
    for e, o in zip(expected, got):
        assert torch.allclose(e, o, atol=1e-6)
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert pa.grad.is_sparse == pb.grad.is_sparse
            assert torch.allclose(pa.grad.to_dense(), pb.grad.to_dense(), atol=1e-6)


def needs(backend):
    from dlrm_mlet.engine import tbe

    if backend == "fbgemm" and tbe.available():
        pytest.skip(tbe.available())


@pytest.mark.parametrize("backend", ["torch", "fbgemm"])
@pytest.mark.parametrize("mode,weighted,one_hot", [("sum", False, False), ("sum", True, False),
                                                   ("mean", False, False), ("sum", False, True)])
def test_fused_update_is_sgd_on_sparse_gradients(mode, weighted, one_hot, backend):
    """--mlet-fused-update[=fbgemm]: same parameters after several SGD steps, lr changing between them."""
    import copy

    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    needs(backend)
    tables = [MLETEmbeddingBag(n, 4, 16, mode=mode) for n in (50, 70, 9)]
    tables.insert(1, torch.nn.EmbeddingBag(30, 4, mode=mode, sparse=True))
    twins = copy.deepcopy(tables)
    assert fused.use(twins, backend) == 3  # the MLET tables; the plain one keeps its sparse gradient
    initial = tables[0].table.weight.detach().clone()
    optimizers = [torch.optim.SGD([p for t in ts for p in t.parameters()], lr=0.5) for ts in (tables, twins)]
    params = [p for t in twins for p in t.parameters()]
    g = torch.Generator().manual_seed(5)
    per_bag = 1 if one_hot else None
    for step in range(4):
        size = 8 if per_bag else 20
        indices = [torch.randint(0, t.num_embeddings, (size,), generator=g) for t in tables]  # repeats rows
        offsets = [torch.arange(8) if per_bag else torch.tensor([0, 2, 2, 5, 9, 12, 15, 19])] * len(tables)
        weights = [torch.rand(size, generator=g) if weighted else None for _ in tables]
        upstream = [torch.randn(8, 4, generator=g) for _ in tables]
        for ts, opt, on in ((tables, optimizers[0], False), (twins, optimizers[1], True)):
            out = grouped_forward(ts, indices, offsets, weights)
            opt.zero_grad()
            sum((o * u).sum() for o, u in zip(out, upstream)).backward()
            if on:
                assert all(t.table.weight.grad is None for t in ts if isinstance(t, MLETEmbeddingBag))
                assert fused.pending_rows(ts) == 3 * (size if backend == "torch" else 8)
            for group in opt.param_groups:
                group["lr"] = 0.5 / (step + 1)  # a scheduler changing lr between steps
            opt.step()
            assert fused.pending_rows(ts) == 0
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-6)
    assert not torch.allclose(tables[0].table.weight, initial)  # the steps did move the rows
    assert [p for t in twins for p in t.parameters()] == params  # the optimizer's Parameters, still the model's


@pytest.mark.parametrize("backend", ["torch", "fbgemm"])
def test_fused_update_with_two_backwards_before_a_step_applies_both(backend):
    """Gradient accumulation (DLRM's --mlperf-grad-accum-iter): rows of both passes reach the step."""
    import copy

    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    needs(backend)
    tables = [MLETEmbeddingBag(n, 4, 16) for n in (50, 70, 9)]
    twins = copy.deepcopy(tables)
    fused.use(twins, backend)
    optimizers = [torch.optim.SGD([p for t in ts for p in t.parameters()], lr=0.5) for ts in (tables, twins)]
    g = torch.Generator().manual_seed(7)
    for step in range(3):
        passes = [([torch.randint(0, t.num_embeddings, (8,), generator=g) for t in tables],
                   [torch.randn(8, 4, generator=g) for _ in tables]) for _ in range(2)]
        for ts, opt, on in ((tables, optimizers[0], False), (twins, optimizers[1], True)):
            opt.zero_grad()
            for indices, upstream in passes:  # one-hot bags: the rows are views of one buffer
                out = grouped_forward(ts, indices, [torch.arange(8)] * 3, [None] * 3)
                sum((o * u).sum() for o, u in zip(out, upstream)).backward()
            opt.step()
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-6)


def test_fbgemm_tables_keep_their_state_dict_and_load_into_the_tbe():
    """The TBE holds the rows, but the model's names, shapes and load_state_dict are DLRM's."""
    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    needs("fbgemm")
    model = torch.nn.ModuleList([MLETEmbeddingBag(n, 4, 16) for n in (50, 70)])
    keys = list(model.state_dict())
    indices, offsets = [torch.tensor([1, 2, 3])] * 2, [torch.tensor([0, 1, 2])] * 2
    fused.use(model, "fbgemm")
    grouped_forward(list(model), indices, offsets, [None] * 2)
    assert list(model.state_dict()) == keys  # the TBE is no submodule
    group = model[0]._tbe_group
    assert model[1].table.weight.untyped_storage().data_ptr() == group.tbe.weights_host.untyped_storage().data_ptr()
    new = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(new)  # e.g. DLRM resuming from PATH.mlet
    expected = [t(i, o) for t, i, o in zip(model, indices, offsets)]
    got = grouped_forward(list(model), indices, offsets, [None] * 2)
    assert all(torch.allclose(e, o, atol=1e-6) for e, o in zip(expected, got))
    with pytest.raises(RuntimeError, match="idx < num_rows"):  # out of range fails, as in nn.EmbeddingBag
        grouped_forward(list(model), [torch.tensor([1, 2, 70])] * 2, offsets, [None] * 2)


def test_fused_update_refuses_other_optimizers():
    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    tables = [MLETEmbeddingBag(10, 4, 16) for _ in range(2)]
    opt = torch.optim.SGD([p for t in tables for p in t.parameters()], lr=0.1, momentum=0.9)
    fused.use(tables)
    out = grouped_forward(tables, [torch.tensor([1, 2])] * 2, [torch.tensor([0, 1])] * 2, [None] * 2)
    sum(o.sum() for o in out).backward()
    with pytest.raises(MLETError, match="plain SGD"):
        opt.step()


@pytest.mark.parametrize("backend", ["torch", "fbgemm"])
def test_a_fused_and_a_plain_model_train_side_by_side_in_one_process(backend):
    """The fused-update choice is each model's: interleaved steps, each model equal to its own reference."""
    import copy

    from dlrm_mlet.engine import fused
    from dlrm_mlet.engine.grouped import grouped_forward

    needs(backend)
    fast = torch.nn.ModuleList([MLETEmbeddingBag(n, 4, 16) for n in (50, 70, 9)])
    plain = torch.nn.ModuleList([MLETEmbeddingBag(n, 4, 8) for n in (40, 60)])
    references = copy.deepcopy(fast), copy.deepcopy(plain)  # both trained with sparse gradients
    initial = fast[0].table.weight.detach().clone()
    assert fused.use(fast, backend) == 3
    assert plain[0].update.backend is None and references[0][0].update.backend is None
    models = (fast, plain) + references
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    g = torch.Generator().manual_seed(11)
    for step in range(4):
        batches = [([torch.randint(0, t.num_embeddings, (8,), generator=g) for t in m],
                    [torch.randn(8, 4, generator=g) for _ in m]) for m in (fast, plain)]
        batches += batches
        for opt in optimizers:
            opt.zero_grad()
        # Both models' backwards run before either steps: rows wait on their own tables.
        for m, (indices, upstream) in zip(models, batches):
            out = grouped_forward(list(m), indices, [torch.arange(8)] * len(m), [None] * len(m))
            sum((o * u).sum() for o, u in zip(out, upstream)).backward()
        assert all(t.table.weight.grad is None for t in fast)
        assert all(t.table.weight.grad.is_sparse for m in models[1:] for t in m)
        assert fused.pending_rows(fast) == 3 * 8  # one-hot bags: 8 rows a table
        assert fused.pending_rows(plain) == 0
        for opt in reversed(optimizers):  # the plain model steps first: it must not apply the fast one's rows
            for group in opt.param_groups:
                group["lr"] = 0.5 / (step + 1)
            opt.step()
            if opt is optimizers[1]:
                assert fused.pending_rows(fast) > 0
        assert fused.pending_rows(fast) == 0
    for model, reference in zip((fast, plain), references):
        for a, b in zip(model.parameters(), reference.parameters()):
            assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(fast[0].table.weight, initial)  # the fused steps did move the rows
