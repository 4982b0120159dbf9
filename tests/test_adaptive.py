"""Adagrad and DLRM's RWSAdagrad applied at the step to packed MLET tables equal the optimizers on sparse gradients."""

import copy
import importlib.util

import pytest
import torch

from dlrm_mlet import MLETError
from dlrm_mlet.core import step
from dlrm_mlet.core.bag import MLETEmbeddingBag
from dlrm_mlet.engine import fused, packing
from dlrm_mlet.engine.grouped import grouped_forward


def rwsadagrad_class(dlrm_dir):
    spec = importlib.util.spec_from_file_location("rwsadagrad", f"{dlrm_dir}/optim/rwsadagrad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RWSAdagrad


def packed_tables(rows, k=16, d=4, mode="sum"):
    torch.manual_seed(0)
    tables = [MLETEmbeddingBag(n, d, k, mode=mode) for n in rows]
    buffer = packing.Buffer(sum(rows), k)
    for t in tables:
        buffer.place(t.table.weight)
    return tables


def make_optimizer(kind, params, dlrm_dir, **options):
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=0.05, **options)
    return rwsadagrad_class(dlrm_dir)(params, lr=0.05, **options)


@pytest.mark.parametrize("kind", ["adagrad", "rwsadagrad"])
@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("projections_packed", [True, False])
def test_packed_update_at_the_step_equals_the_optimizer_on_sparse_gradients(kind, one_hot, projections_packed,
                                                                            dlrm_dir):
    sparse = packed_tables([50, 70, 9])
    fast = copy.deepcopy(sparse)  # deepcopy unpacks: pack the copy again
    buffer = packing.Buffer(sum(t.num_embeddings for t in fast), 16)
    for t in fast:
        buffer.place(t.table.weight)
    if projections_packed:  # back to back, as DLRM's are: Adagrad then updates them at the step too
        projections = packing.Buffer(4 * len(fast), 16)
        for t in fast:
            projections.place(t.proj.weight)
    at_step = projections_packed and kind == "adagrad"
    assert fused.use(fast, "torch", kind) == 3
    options = {"lr_decay": 0.01, "initial_accumulator_value": 0.1} if kind == "adagrad" else {}
    opts = [make_optimizer(kind, [p for t in ts for p in t.parameters()], dlrm_dir, **options) for ts in (sparse, fast)]
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        size = 8 if one_hot else 20
        indices = [torch.randint(0, t.num_embeddings, (size,), generator=g) for t in sparse]  # repeats rows
        offsets = [torch.arange(8) if one_hot else torch.tensor([0, 2, 2, 5, 9, 12, 15, 19])] * 3
        upstream = [torch.randn(8, 4, generator=g) for _ in sparse]
        for ts, opt, on in ((sparse, opts[0], False), (fast, opts[1], True)):
            opt.zero_grad()
            out = grouped_forward(ts, indices, offsets, [None] * 3)
            sum((o * u).sum() for o, u in zip(out, upstream)).backward()
            if on:
                assert all(t.table.weight.grad is None for t in ts)
                assert all((t.proj.weight.grad is None) == at_step for t in ts)
            opt.step()
            assert fused.pending_rows(ts) == 0
    key = "sum" if kind == "adagrad" else "momentum"
    for a, b, pa, pb in zip(sparse, fast, opts[0].param_groups[0]["params"], opts[1].param_groups[0]["params"]):
        for x, y in zip(a.parameters(), b.parameters()):
            assert torch.allclose(x, y, atol=1e-6)
    for pa, pb in zip(opts[0].param_groups[0]["params"], opts[1].param_groups[0]["params"]):
        sa, sb = opts[0].state[pa], opts[1].state[pb]
        assert set(sa) == set(sb) and float(sa["step"]) == float(sb["step"])  # the same state dict layout
        if key in sa:
            assert sa[key].shape == sb[key].shape and torch.allclose(sa[key], sb[key], atol=1e-6)
    # the accumulators now lie in one buffer aligned with the tables', each table's state a view of it
    states = [opts[1].state[t.table.weight][key] for t in fast]
    assert len({s.untyped_storage().data_ptr() for s in states}) == 1
    if at_step:  # and the projections' sums in one buffer of their own
        assert len({opts[1].state[t.proj.weight]["sum"].untyped_storage().data_ptr() for t in fast}) == 1
    # state replaced by separate tensors (as a load from another layout leaves it): packed again, same result
    for t in fast:
        opts[1].state[t.table.weight][key] = opts[1].state[t.table.weight][key].clone()
        if at_step:
            opts[1].state[t.proj.weight]["sum"] = opts[1].state[t.proj.weight]["sum"].clone()
    indices, offsets = [torch.tensor([1, 3, 5, 7])] * 3, [torch.tensor([0, 1, 2, 3])] * 3
    for ts, opt in ((sparse, opts[0]), (fast, opts[1])):
        opt.zero_grad()
        sum(o.sum() for o in grouped_forward(ts, indices, offsets, [None] * 3)).backward()
        opt.step()
    assert len({opts[1].state[t.table.weight][key].untyped_storage().data_ptr() for t in fast}) == 1
    if at_step:
        assert len({opts[1].state[t.proj.weight]["sum"].untyped_storage().data_ptr() for t in fast}) == 1
    assert all(torch.allclose(a.table.weight, b.table.weight, atol=1e-6) for a, b in zip(sparse, fast))
    assert all(torch.allclose(a.proj.weight, b.proj.weight, atol=1e-6) for a, b in zip(sparse, fast))


def test_tables_held_by_another_optimizer_and_a_wrong_optimizer(dlrm_dir):
    tables = packed_tables([30, 40])
    fused.use(tables, "torch", "adagrad")
    with pytest.raises(MLETError, match="updated at the step by Adagrad's rule .* this optimizer is SGD"):
        step.attach(torch.optim.SGD([p for t in tables for p in t.parameters()], lr=0.1))
    # each table in its own optimizer: each updated alone, at its optimizer's lr
    opts = [torch.optim.Adagrad(list(t.parameters()), lr=lr) for t, lr in zip(tables, (0.1, 0.2))]
    before = [t.table.weight.detach().clone() for t in tables]
    out = grouped_forward(tables, [torch.tensor([1, 2])] * 2, [torch.tensor([0, 1])] * 2, [None, None])
    sum(o.sum() for o in out).backward()
    opts[0].step()
    assert not torch.equal(tables[0].table.weight, before[0]) and torch.equal(tables[1].table.weight, before[1])
    opts[1].step()
    assert not torch.equal(tables[1].table.weight, before[1]) and fused.pending_rows(tables) == 0
