"""Packed tables (core/packing.py): one buffer under many tables, and nothing else changes."""

import argparse
import copy

import pytest
import torch

from dlrm_mlet import MLETEmbeddingBag
from dlrm_mlet.engine import fused, packing
from dlrm_mlet.engine.grouped import grouped_forward

SIZES = (50, 70, 9)


def packed_twins(tables, dtype=torch.float32):
    """Deep copies of ``tables`` whose tables and projections are placed in two buffers, as DLRM's create_emb does."""
    twins = copy.deepcopy(tables)
    mlet = [t for t in twins if isinstance(t, MLETEmbeddingBag)]
    rows = packing.Buffer(sum(t.num_embeddings for t in mlet), mlet[0].hidden_dim, dtype)
    projs = packing.Buffer(sum(t.embedding_dim for t in mlet), mlet[0].hidden_dim)
    for t in mlet:
        rows.place(t.table.weight)
        projs.place(t.proj.weight)
    return twins


def batch(g, tables, one_hot, weighted, bags=8):
    size = bags if one_hot else 20
    indices = [torch.randint(0, t.num_embeddings, (size,), generator=g) for t in tables]  # repeats rows
    offsets = [torch.arange(bags) if one_hot else torch.tensor([0, 2, 2, 5, 9, 12, 15, 19])] * len(tables)
    weights = [torch.rand(size, generator=g) if weighted else None for _ in tables]
    return indices, offsets, weights


def test_place_keeps_each_parameter_and_its_values_and_makes_one_storage():
    tables = [MLETEmbeddingBag(n, 4, 16) for n in SIZES]
    params = [p for t in tables for p in t.parameters()]
    values = [p.detach().clone() for p in params]
    keys = [list(t.state_dict()) for t in tables]
    twins = packed_twins(tables)
    packed = [p for t in twins for p in t.parameters()]
    assert packing.flat_indices([t.table.weight for t in tables], [torch.tensor([0])] * 3) is None  # originals
    for p, v in zip(packed, values):
        assert isinstance(p, torch.nn.Parameter) and p.is_leaf and torch.equal(p, v)
    assert [list(t.state_dict()) for t in twins] == keys
    weights = [t.table.weight for t in twins]
    buffer, flat = packing.flat_indices(weights, [torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([8])])
    assert buffer.shape == (sum(SIZES), 16) and flat.tolist() == [1, 2, 50, 120 + 8]
    for row, w, j in ((1, weights[0], 1), (50, weights[1], 0), (128, weights[2], 8)):
        assert torch.equal(buffer[row], w[j])
    assert packing.stacked([t.proj.weight for t in twins]).data_ptr() == twins[0].proj.weight.data_ptr()  # a view
    assert packing.stacked([t.proj.weight for t in tables]).data_ptr() != tables[0].proj.weight.data_ptr()  # a copy
    assert packing.stacked([t.proj.weight for t in reversed(twins)]).data_ptr() != twins[2].proj.weight.data_ptr()


def test_a_table_too_big_for_the_buffer_is_refused_before_anything_moves():
    buffer = packing.Buffer(10, 16)
    table = MLETEmbeddingBag(11, 4, 16)
    before = table.table.weight.data_ptr()
    with pytest.raises(ValueError, match="does not fit the packing buffer's 10 free rows"):
        buffer.place(table.table.weight)
    assert table.table.weight.data_ptr() == before


def test_moving_or_replacing_a_weight_unpacks_it_and_the_engine_still_answers():
    tables = packed_twins([MLETEmbeddingBag(n, 4, 16) for n in SIZES])
    indices = [torch.tensor([1, 2])] * 3
    assert packing.flat_indices([t.table.weight for t in tables], indices) is not None
    expected = grouped_forward(tables, indices, [torch.tensor([0, 1])] * 3, [None] * 3)
    tables[1].table.weight.data = tables[1].table.weight.detach().clone()  # e.g. load_state_dict(assign=True)
    assert packing.flat_indices([t.table.weight for t in tables], indices) is None
    got = grouped_forward(tables, indices, [torch.tensor([0, 1])] * 3, [None] * 3)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    double = copy.deepcopy(tables[0]).double()
    assert packing.flat_indices([double.table.weight] * 2, [torch.tensor([0])] * 2) is not None  # one tensor twice


@pytest.mark.parametrize("index", [-1, 9, 10])
def test_an_index_outside_its_table_is_refused_not_read_from_the_neighbour(index):
    tables = [MLETEmbeddingBag(n, 4, 16) for n in SIZES]
    indices = [torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([0, index])]  # table 2 has 9 rows
    with pytest.raises(IndexError, match=f"index {index} is out of range for table 2 of the group .9 rows"):
        grouped_forward(packed_twins(tables), indices, [torch.tensor([0, 1])] * 3, [None] * 3)
    with pytest.raises(IndexError):  # as unpacked tables (nn.EmbeddingBag) do
        grouped_forward(tables, indices, [torch.tensor([0, 1])] * 3, [None] * 3)


@pytest.mark.parametrize("update,dtype", [("sparse", torch.float32), ("fused", torch.float32),
                                          ("sparse", torch.float16)])  # half tables: their own update
@pytest.mark.parametrize("mode,weighted,one_hot", [("sum", False, True), ("sum", True, True), ("sum", True, False),
                                                   ("mean", False, False)])
def test_packed_tables_train_as_unpacked_ones(update, dtype, mode, weighted, one_hot):
    """Same outputs, gradients and parameters after SGD steps with a changing lr, packed or not."""
    tables = [MLETEmbeddingBag(n, 4, 16, mode=mode, table_dtype=dtype) for n in SIZES]
    tables.insert(1, torch.nn.EmbeddingBag(30, 4, mode=mode, sparse=True))  # a plain table among them
    twins = packed_twins(tables, dtype)
    if update == "fused":
        fused.use(twins)
    optimizers = [torch.optim.SGD([p for t in ts for p in t.parameters()], lr=0.5) for ts in (tables, twins)]
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        indices, offsets, weights = batch(g, tables, one_hot, weighted)
        upstream = [torch.randn(8, 4, generator=g) for _ in tables]
        outs = []
        for ts, opt in zip((tables, twins), optimizers):
            opt.zero_grad()
            out = grouped_forward(ts, indices, offsets, weights)
            sum((o * u).sum() for o, u in zip(out, upstream)).backward()
            outs.append(out)
            for group in opt.param_groups:
                group["lr"] = 0.5 / (step + 1)
        for a, b in zip(*outs):
            assert torch.allclose(a, b, atol=1e-6)
        if update == "sparse" and dtype == torch.float32:
            for a, b in zip(tables, twins):
                for pa, pb in zip(a.parameters(), b.parameters()):
                    assert torch.allclose(pa.grad.to_dense(), pb.grad.to_dense(), atol=1e-6)
        for opt in optimizers:
            torch.manual_seed(step)  # half tables round stochastically: the same draws on both sides
            opt.step()
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa.float(), pb.float(), atol=1e-6 if dtype == torch.float32 else 1e-3)
    mlet = [t for t in twins if isinstance(t, MLETEmbeddingBag)]
    assert packing.flat_indices([t.table.weight for t in mlet], [torch.tensor([0])] * 3) is not None  # still packed


def test_fused_update_with_the_projections_in_another_group_uses_each_groups_lr():
    """The batched add needs one param group holding all; otherwise each parameter takes its own group's lr."""
    tables = [MLETEmbeddingBag(n, 4, 16) for n in SIZES]
    twins = packed_twins(tables)
    fused.use(twins)
    optimizers = []
    for ts in (tables, twins):
        optimizers.append(torch.optim.SGD([{"params": [t.table.weight for t in ts], "lr": 0.5},
                                           {"params": [t.proj.weight for t in ts], "lr": 0.05}]))
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        indices, offsets, _ = batch(g, tables, True, False)
        upstream = [torch.randn(8, 4, generator=g) for _ in tables]
        for ts, opt in zip((tables, twins), optimizers):
            opt.zero_grad()
            out = grouped_forward(ts, indices, offsets, [None] * 3)
            sum((o * u).sum() for o, u in zip(out, upstream)).backward()
            opt.step()
            assert fused.pending_rows(ts) == 0
    for a, b in zip(tables, twins):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-6)


def test_the_dlrm_default_update_is_the_optimizers_rule_at_the_step():
    from dlrm_mlet.dlrm.options import add_arguments, parse_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flags, optimizer, expected in (([], "sgd", "torch"), ([], "adagrad", "torch"), ([], "rwsadagrad", "torch"),
                                       (["--mlet-fused-update=off"], "sgd", ""),
                                       (["--mlet-fused-update=off"], "adagrad", ""),
                                       (["--mlet-fused-update"], "sgd", "torch")):
        args = parser.parse_args(["--mlet-hidden-dim=64"] + flags)
        args.arch_sparse_feature_size, args.optimizer = 16, optimizer
        assert parse_config(args).fused_update == expected, (flags, optimizer)
