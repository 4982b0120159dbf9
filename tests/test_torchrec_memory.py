"""TorchRec MLET at less memory: half-precision k-wide tables and row-wise Adagrad.

What fbgemm's CPU kernels (fbgemm-gpu-cpu 1.8) do with half tables is pinned
here, because the collection's refusals and warning rest on it. The
distributed test trains on two gloo ranks with row-wise Adagrad on the tables
(fbgemm's fused update) and Adagrad on the dense part, checkpoints the way a
TorchRec user does (``torch.distributed.checkpoint`` of the DMP model's and the
``CombinedOptimizer``'s state dicts), resumes into a freshly built model and
checks the run is the uninterrupted one; then folds into stock DLRM.
"""

import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec")

import torch.distributed as dist  # noqa: E402
from torchrec.datasets.utils import Batch  # noqa: E402
from torchrec.distributed.model_parallel import get_default_sharders  # noqa: E402
from torchrec.distributed.planner import ParameterConstraints, Topology  # noqa: E402
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator  # noqa: E402
from torchrec.modules.embedding_configs import DataType  # noqa: E402

from conftest import leave_gloo  # noqa: E402
from dlrm_mlet.errors import MLETError  # noqa: E402
from dlrm_mlet.checkpoint_io import load_checkpoint  # noqa: E402
from dlrm_mlet.torchrec import MLETEmbeddingBagCollection, fold_torchrec_state_dict, mlet_dlrm  # noqa: E402
from dlrm_mlet.torchrec.collection import _check_table_dtype  # noqa: E402
from test_torchrec import (  # noqa: E402
    BATCH, DENSE_IN, DENSE_LAYERS, EVAL_BATCH, K, OVER_LAYERS, ROWS, WORLD,
    init_gloo, make_batch, run_gloo_workers, train_steps, slice_batch, stock_dlrm, tables,
)

FP16_ON_CPU = "table_dtype fp16 on the CPU"


def half_dlrm(hidden_dim=K, table_dtype="fp16", **kwargs):
    """An MLET DLRM with ``table_dtype`` tables on the CPU, the fp16 warning (expected) silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", FP16_ON_CPU)
        return mlet_dlrm(tables(), hidden_dim, DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_dtype=table_dtype, **kwargs)


# --- what fbgemm's CPU kernels do with half tables ---------------------------


def _cpu_tbe(precision, stochastic_rounding):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    return SplitTableBatchedEmbeddingBagsCodegen(
        [(4, 64, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=EmbOptimType.EXACT_SGD,
        weights_precision=precision, stochastic_rounding=stochastic_rounding, learning_rate=1.0,
    )


def test_fbgemm_cpu_rounds_fp16_updates_to_nearest_and_has_no_bf16():
    """The facts behind the collection's fp16 warning and bf16 refusal.

    Row 0 starts at 1.0 (fp16 spacing there: 2^-10) and gets 100 SGD steps of
    +spacing/16, +0.38 spacing and +0.62 spacing. Stochastic rounding would move
    the mean by 100x the step (6.1e-3, 3.7e-2, 6.1e-2); fbgemm's CPU kernel, told
    stochastic_rounding=True, rounds each step to nearest: 0, 0 and a full
    spacing per step (9.8e-2), every element alike.
    """
    from fbgemm_gpu.split_embedding_configs import SparseType

    spacing = 2.0**-10
    for fraction, moved in ((1 / 16, 0.0), (0.38, 0.0), (0.62, 100 * spacing)):
        tbe = _cpu_tbe(SparseType.FP16, stochastic_rounding=True)
        assert tbe.stochastic_rounding  # asked for, and ignored on the CPU
        with torch.no_grad():
            tbe.split_embedding_weights()[0].fill_(1.0)
        indices, offsets = torch.tensor([0]), torch.tensor([0, 1])
        for _ in range(100):
            out = tbe(indices, offsets)
            out.backward(torch.full_like(out, -fraction * spacing))
        row = tbe.split_embedding_weights()[0][0]
        assert row.dtype == torch.float16
        assert row.unique().numel() == 1  # stochastic rounding would scatter the elements
        assert row.float().mean().item() - 1.0 == pytest.approx(moved, abs=1e-9)

    tbe = _cpu_tbe(SparseType.BF16, stochastic_rounding=True)
    with pytest.raises(NotImplementedError, match="not implemented for 'BFloat16'"):
        tbe(torch.tensor([0]), torch.tensor([0, 1]))


# --- the collection with half tables, one process -------------------------


def test_half_k_wide_tables_keep_plain_tables_and_the_d_wide_configs_as_given():
    with pytest.warns(UserWarning, match="updates round to nearest"):
        mlet = MLETEmbeddingBagCollection(tables(), [K, 0, K], table_dtype="fp16")
    assert mlet.table_dtype == torch.float16
    wide = {c.name: c for c in mlet.ebc.embedding_bag_configs()}
    assert [wide[n].data_type for n in ("t0", "t1", "t2")] == [DataType.FP16, DataType.FP32, DataType.FP16]
    assert [mlet.ebc.embedding_bags[n].weight.dtype for n in ("t0", "t1", "t2")] == [
        torch.float16, torch.float32, torch.float16
    ]
    assert all(c.data_type == DataType.FP32 for c in mlet.embedding_bag_configs())
    assert all(p.weight.dtype == torch.float32 for p in mlet.proj.values())
    # Other spellings; None and fp32 leave the tables as before.
    assert MLETEmbeddingBagCollection(tables(), K, table_dtype=None).table_dtype == torch.float32
    assert MLETEmbeddingBagCollection(tables(), K, table_dtype=torch.float32).table_dtype == torch.float32
    with pytest.warns(UserWarning, match=FP16_ON_CPU):
        assert MLETEmbeddingBagCollection(tables(), K, table_dtype=torch.float16).table_dtype == torch.float16


def test_half_tables_fold_in_float32_into_a_float32_stock_model():
    model = half_dlrm()
    mlet = model.sparse_arch.embedding_bag_collection
    dense, kjt, _ = make_batch(64, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape).to(p.dtype))
        expected = model(dense, kjt)
        assert mlet(kjt).values().dtype == torch.float32
        plain = mlet.fold()
        for name, bag in plain.embedding_bags.items():
            table, proj = mlet.ebc.embedding_bags[name].weight, mlet.proj[name].weight
            assert bag.weight.dtype == torch.float32
            assert torch.allclose(bag.weight, table.float() @ proj.t(), rtol=0, atol=1e-6)
        state = fold_torchrec_state_dict(model)
        assert all(v.dtype == torch.float32 for v in state.values())
        stock = stock_dlrm()
        stock.load_state_dict(state, strict=True)
        diff = (stock(dense, kjt) - expected).abs().max().item()
    # Unsharded, TorchRec's EmbeddingBagCollection pools an fp16 table in fp16
    # (then casts): that rounding, not the fold, is this gap (measured 4.3e-5).
    # fbgemm's kernels under DMP pool in float32; there the gap is <= 1e-5.
    assert diff <= 5e-4, diff


def test_table_dtypes_torchrec_cannot_train_are_refused_with_one_line():
    with pytest.raises(MLETError, match="table dtype must be one of fp32, fp16, bf16, got 'int8'"):
        MLETEmbeddingBagCollection(tables(), K, table_dtype="int8")
    with pytest.raises(MLETError, match="^table_dtype bf16 is not trainable on the CPU: fbgemm's CPU"):
        MLETEmbeddingBagCollection(tables(), K, table_dtype="bf16")
    with pytest.raises(MLETError, match="table_dtype bf16 is not trainable on the CPU"):
        mlet_dlrm(tables(), K, DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_device="meta", table_dtype="bf16")
    # On a GPU, bf16 is for DMP's sharded tables only; what the model runs on decides.
    meta, cuda = torch.device("meta"), torch.device("cuda")
    _check_table_dtype(torch.bfloat16, meta, cuda)
    with pytest.raises(MLETError, match="needs device='meta' and DistributedModelParallel"):
        _check_table_dtype(torch.bfloat16, cuda, cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_table_dtype(torch.float16, meta, cuda)  # fbgemm's CUDA kernels round stochastically
        MLETEmbeddingBagCollection(tables(), K, min_rows=1000, table_dtype="bf16")  # no k-wide table


def test_planner_counts_half_k_wide_tables_at_half_the_bytes():
    """The planner reads the k-wide configs' data_type: fp16 tables take half the storage."""
    topology = Topology(world_size=WORLD, compute_device="cpu")
    constraints = {c.name: ParameterConstraints(sharding_types=["table_wise"]) for c in tables()}
    storage = {}
    for dtype in ("fp32", "fp16"):
        model = half_dlrm(64, dtype, table_device="meta")
        options = EmbeddingEnumerator(topology=topology, batch_size=BATCH, constraints=constraints).enumerate(
            model, get_default_sharders()
        )
        storage[dtype] = {o.name: o.total_storage.ddr for o in options}
    # Measured (bytes, t0/t1/t2): fp32 21248/34304/16128, fp16 10752/17280/8192.
    for n, config in zip(ROWS, tables()):
        half, full = storage["fp16"][config.name], storage["fp32"][config.name]
        assert n * 64 * 2 <= half <= 0.52 * full


def test_dlrm_trainer_passes_mlet_table_dtype_to_the_collection(capsys):
    """The patched TorchRec trainer's hook: ``--mlet-table-dtype`` reaches the k-wide tables."""
    import argparse

    from dlrm_mlet.torchrec.trainer import add_arguments, collection_factory

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--mlet-hidden-dim", str(K), "--mlet_table_dtype", "fp16"])
    with pytest.warns(UserWarning, match=FP16_ON_CPU):
        ebc = collection_factory(args, torch.device("cpu"))(tables(), device=torch.device("meta"))
    assert ebc.table_dtype == torch.float16
    assert {c.data_type for c in ebc.ebc.embedding_bag_configs()} == {DataType.FP16}
    assert f"tables trained as n x {K} -> 8 (fp16 tables)" in capsys.readouterr().out
    args = parser.parse_args(["--mlet-hidden-dim", str(K), "--mlet-table-dtype", "bf16"])
    with pytest.raises(SystemExit, match="^ERROR: table_dtype bf16 is not trainable on the CPU"):
        collection_factory(args, torch.device("cpu"))(tables(), device=torch.device("meta"))


# --- two gloo ranks: row-wise Adagrad, checkpoint, resume, fold ---------------

S = 12  # steps trained, checkpointed, then resumed for S more; against 2S uninterrupted
LR = 0.1
PLAN = {"t0": "row_wise", "t1": "column_wise", "t2": "table_wise"}  # t2 on rank 1
DTYPES = ("fp32", "fp16")
EBC = "model.sparse_arch.embedding_bag_collection.ebc"


def _sharding_plan(model):
    """``PLAN`` written with TorchRec's plan helpers (its CPU planner offers no row-wise)."""
    from torchrec.distributed.sharding_plan import (
        column_wise, construct_module_sharding_plan, row_wise, table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    kinds = {"row_wise": row_wise(), "column_wise": column_wise(ranks=[0, 1]), "table_wise": table_wise(rank=1)}
    ebc = model.model.sparse_arch.embedding_bag_collection.ebc
    plan = construct_module_sharding_plan(ebc, {t: kinds[kind] for t, kind in PLAN.items()}, device_type="cpu")
    return ShardingPlan({EBC: plan})


def _build(table_dtype, seed):
    """DMP MLET DLRM: TorchRec's RowWiseAdagrad fused into the tables' backward, Adagrad for the rest."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.models.dlrm import DLRMTrain
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from dlrm_mlet.torchrec import sparse_parameters

    np.random.seed(seed)
    torch.manual_seed(seed)
    model = DLRMTrain(half_dlrm(K, table_dtype, table_device="meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, sparse_parameters(model), {"lr": LR})
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=_sharding_plan(model))
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adagrad(params, lr=LR),
    )
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def _local(state, prefix=""):
    """A nested state dict's tensors as this rank holds them (a ShardedTensor: its local shards)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_local(value, f"{prefix}{key}/"))
        elif isinstance(value, ShardedTensor):
            out[prefix + key] = [shard.tensor.detach().clone() for shard in value.local_shards()]
        elif torch.is_tensor(value):
            out[prefix + key] = [value.detach().clone()]
    return out


def _max_diff(a, b):
    """Largest |a - b| over every tensor of two ``_local`` snapshots, over all ranks."""
    assert a.keys() == b.keys()
    diff = max((x.float() - y.float()).abs().max().item() for key in a for x, y in zip(a[key], b[key]))
    box = torch.tensor(diff)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return box.item()


def _tbe_settings(dmp):
    """(weights precision, stochastic_rounding) of each fbgemm TBE holding the k-wide tables."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    ebc = dmp.module.model.sparse_arch.embedding_bag_collection.ebc
    return [
        (m.weights_precision.name, m.stochastic_rounding)
        for lookup in ebc._lookups for m in lookup.modules()
        if isinstance(m, SplitTableBatchedEmbeddingBagsCodegen)
    ]


def _resume_worker(rank, port, out_dir):
    """Per table dtype: 2S steps straight; S steps, checkpoint, a fresh model loads it, S more; fold."""
    import torch.distributed.checkpoint as dcp

    init_gloo(rank, port)
    for table_dtype in DTYPES:
        straight, straight_opt = _build(table_dtype, seed=0)
        straight_losses = train_steps(straight, straight_opt, range(2 * S), rank)

        first, first_opt = _build(table_dtype, seed=0)
        first_losses = train_steps(first, first_opt, range(S), rank)
        checkpoint = os.path.join(out_dir, f"{table_dtype}.dcp")
        dcp.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, checkpoint_id=checkpoint)
        state = first_opt.state_dict()["state"]
        momentum = {}
        for table in PLAN:  # a rank's fused optimizer has state for the tables it holds only
            m = state.get(f"{EBC}.embedding_bags.{table}.weight", {}).get(f"{table}.momentum1")
            if m is not None:
                momentum[table] = (tuple(m.size()), m.dtype, [tuple(s.tensor.shape) for s in m.local_shards()])
        del first, first_opt

        resumed, resumed_opt = _build(table_dtype, seed=1)  # another init: the load must replace it
        fresh = _local(resumed.state_dict())
        target = {"model": resumed.state_dict(), "optimizer": resumed_opt.state_dict()}
        dcp.load(target, checkpoint_id=checkpoint)
        resumed.load_state_dict(target["model"])
        resumed_opt.load_state_dict(target["optimizer"])
        loaded_diff = _max_diff(fresh, _local(resumed.state_dict()))
        resumed_losses = train_steps(resumed, resumed_opt, range(S, 2 * S), rank)

        losses = torch.cat([first_losses, resumed_losses])
        loss_diff = (losses - straight_losses).abs().max()
        dist.all_reduce(loss_diff, op=dist.ReduceOp.MAX)
        weights = _local(resumed.state_dict())
        result = {
            "loss_diff": loss_diff.item(),
            "weight_diff": _max_diff(weights, _local(straight.state_dict())),
            "optimizer_diff": _max_diff(_local(resumed_opt.state_dict()), _local(straight_opt.state_dict())),
            "loaded_diff": loaded_diff,
            "losses": straight_losses,
            "tbe": _tbe_settings(resumed),
            "table_dtypes": {k: v.dtype for k, v in resumed.state_dict().items() if ".ebc." in k},
        }
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, momentum)
        result["momentum"] = gathered

        resumed.eval()
        share = EVAL_BATCH // WORLD
        part = slice_batch(*make_batch(EVAL_BATCH, seed=7), rank * share, (rank + 1) * share)
        with torch.no_grad():
            _, (_, logits, _) = resumed(Batch(dense_features=part[0], sparse_features=part[1], labels=part[2]))
        predictions = [torch.empty_like(logits) for _ in range(WORLD)]
        dist.all_gather(predictions, logits)
        fold_torchrec_state_dict(resumed.module.model, os.path.join(out_dir, f"{table_dtype}.folded.pt"))
        if rank == 0:
            result["predictions"] = torch.cat(predictions)
            torch.save(result, os.path.join(out_dir, f"{table_dtype}.result.pt"))
        dist.barrier()
    leave_gloo()


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    return run_gloo_workers(_resume_worker, str(tmp_path_factory.mktemp("torchrec_resume")))


@pytest.mark.parametrize("table_dtype", DTYPES)
def test_rowwise_adagrad_resumes_exactly_and_folds_into_stock_dlrm(resume_runs, table_dtype):
    result = load_checkpoint(os.path.join(resume_runs, f"{table_dtype}.result.pt"))
    losses = result["losses"]
    print(
        f"{table_dtype}: loss {losses[:8].mean():.3f} -> {losses[-8:].mean():.3f}; resumed - straight: "
        f"losses {result['loss_diff']:.3g}, weights {result['weight_diff']:.3g}, "
        f"optimizer state {result['optimizer_diff']:.3g}"
    )
    assert losses[-8:].mean() < 0.9 * losses[:8].mean(), "MLET did not train"
    # The checkpoint replaced the fresh model's own init, and the resumed run is the
    # straight one: measured bit for bit (0.0) for fp32 and fp16 tables alike. On the
    # CPU fbgemm rounds fp16 updates to nearest, so no random draw is involved.
    assert result["loaded_diff"] > 0.01
    assert result["loss_diff"] <= 1e-6 and result["weight_diff"] <= 1e-6 and result["optimizer_diff"] <= 1e-6

    # The k-wide tables sit in fbgemm at the asked precision, with TorchRec's default
    # stochastic_rounding=True left on (the CUDA kernels honour it; the CPU ones do not).
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[table_dtype]
    assert set(result["table_dtypes"].values()) == {dtype}
    assert result["tbe"] and all(t == (table_dtype.upper(), True) for t in result["tbe"])

    # Row-wise Adagrad keeps one float32 per row: n floats for a table- or row-wise
    # table whatever k; each column shard keeps its own (2 shards: 2n).
    per_shard = {"row_wise": 1, "table_wise": 1, "column_wise": 2}
    for n, (table, kind) in zip(ROWS, PLAN.items()):
        seen = [rank[table] for rank in result["momentum"] if table in rank]
        assert {(size, dt) for size, dt, _ in seen} == {((per_shard[kind] * n,), torch.float32)}
        assert sum(shape[0] for _, _, shards in seen for shape in shards) == per_shard[kind] * n

    state = load_checkpoint(os.path.join(resume_runs, f"{table_dtype}.folded.pt"))
    assert all(v.dtype == torch.float32 for v in state.values())
    stock = stock_dlrm()
    stock.load_state_dict(state, strict=True)
    dense, kjt, _ = make_batch(EVAL_BATCH, seed=7)
    with torch.no_grad():
        predictions = stock(dense, kjt).squeeze(-1)
    diff = (predictions - result["predictions"]).abs().max().item()
    print(f"{table_dtype}: max |stock folded - distributed MLET| = {diff:.3g}")
    assert diff <= 1e-5
