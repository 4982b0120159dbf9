"""MLET inside TorchRec: plain and DistributedModelParallel models fold into stock DLRM.

The distributed tests start two gloo processes on the loopback interface and
train under table-wise, row-wise and column-wise plans; the folded file is then
loaded into a single-process stock ``torchrec.models.dlrm.DLRM``.
"""

import datetime
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.datasets.utils import Batch  # noqa: E402
from torchrec.distributed.model_parallel import get_default_sharders  # noqa: E402
from torchrec.distributed.planner import (  # noqa: E402
    EmbeddingShardingPlanner,
    ParameterConstraints,
    Topology,
)
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator  # noqa: E402
from torchrec.models.dlrm import DLRM  # noqa: E402
from torchrec.modules.embedding_configs import PoolingType  # noqa: E402

from conftest import leave_gloo  # noqa: E402
from dlrm_mlet.checkpoint_io import load_checkpoint  # noqa: E402
from dlrm_mlet.errors import MLETError  # noqa: E402
from dlrm_mlet.torchrec import (  # noqa: E402
    MLETEmbeddingBagCollection,
    fold_torchrec_state_dict,
    mlet_dlrm,
    sparse_parameters,
)

D, K, DENSE_IN = 8, 32, 4
ROWS = (50, 101, 30)  # 101: row-wise shards of unequal size
POOLING = (PoolingType.SUM, PoolingType.SUM, PoolingType.MEAN)
DENSE_LAYERS, OVER_LAYERS = [16, D], [16, 1]
PLANS = {  # run name -> each table's sharding type
    "table_wise": ["table_wise"] * 3,
    "row_wise": ["row_wise"] * 3,
    "column_wise": ["column_wise"] * 3,
    "mixed": ["data_parallel", "column_wise", "table_wise"],
    "per_table": ["table_wise"] * 3,
}
# Each run's hidden_dim (K unless given here): per_table keeps t1 plain (d-wide, no
# projection) and trains t0 and t2 at two different widths in one collection.
HIDDEN = {"per_table": [K, 0, 2 * K]}
WORLD, STEPS, BATCH, EVAL_BATCH = 2, 300, 16, 24
WORKER_DEADLINE_S = 400


def tables():
    return [
        EmbeddingBagConfig(
            name=f"t{i}", embedding_dim=D, num_embeddings=n, feature_names=[f"f{i}"], pooling=p
        )
        for i, (n, p) in enumerate(zip(ROWS, POOLING))
    ]


def stock_dlrm():
    return DLRM(EmbeddingBagCollection(tables=tables()), DENSE_IN, DENSE_LAYERS, OVER_LAYERS)


def make_batch(size, seed):
    """Bags of 0-3 ids (empty bags included); a label that the ids and dense part decide."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(ROWS), size), generator=g)
    values = [torch.randint(0, n, (int(lengths[i].sum()),), generator=g) for i, n in enumerate(ROWS)]
    dense = torch.randn(size, DENSE_IN, generator=g)
    first = torch.zeros(size)
    starts = torch.cumsum(lengths[0], 0) - lengths[0]
    has = lengths[0] > 0
    first[has] = values[0][starts[has]].float()
    labels = ((first < ROWS[0] / 2).float() + (dense[:, 0] > 0).float() >= 1).long()
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f"f{i}" for i in range(len(ROWS))], values=torch.cat(values), lengths=lengths.flatten()
    )
    return dense, kjt, labels


def slice_batch(dense, kjt, labels, start, stop):
    """Rows start:stop of a batch, as one rank's share of it."""
    per_key = kjt.to_dict()
    parts = [per_key[key] for key in kjt.keys()]
    lengths = torch.cat([p.lengths()[start:stop] for p in parts])
    values = torch.cat([p.values()[p.offsets()[start] : p.offsets()[stop]] for p in parts])
    sub = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=values, lengths=lengths)
    return dense[start:stop], sub, labels[start:stop]


def test_mlet_collection_output_matches_its_fold_and_stock_dlrm_loads_it_strictly():
    model = mlet_dlrm(tables(), K, DENSE_IN, DENSE_LAYERS, OVER_LAYERS)
    mlet = model.sparse_arch.embedding_bag_collection
    dense, kjt, _ = make_batch(64, seed=1)
    with torch.no_grad():
        # Train-like perturbation so the fold is not checked at init only.
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        expected = model(dense, kjt)
        plain = mlet.fold()
        assert type(plain) is EmbeddingBagCollection
        assert [c.embedding_dim for c in plain.embedding_bag_configs()] == [D] * len(ROWS)
        assert torch.allclose(plain(kjt).values(), mlet(kjt).values(), atol=1e-6)
        assert plain(kjt).keys() == mlet(kjt).keys() == ["f0", "f1", "f2"]

        state = fold_torchrec_state_dict(model)
        stock = stock_dlrm()
        stock.load_state_dict(state, strict=True)
        diff = (stock(dense, kjt) - expected).abs().max().item()
    assert diff <= 1e-5


def test_fold_is_exact_for_weighted_bags_and_a_table_shared_by_two_features():
    configs = [
        EmbeddingBagConfig(name="shared", embedding_dim=D, num_embeddings=20, feature_names=["a", "b"]),
        EmbeddingBagConfig(name="other", embedding_dim=D, num_embeddings=9, feature_names=["c"]),
    ]  # weighted bags: torch allows per-sample weights with sum pooling only
    mlet = MLETEmbeddingBagCollection(configs, K, is_weighted=True)
    lengths = torch.tensor([2, 0, 3, 1, 1, 2])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["a", "b", "c"], values=torch.tensor([1, 19, 0, 5, 5, 8, 2, 3, 4]), lengths=lengths,
        weights=torch.rand(int(lengths.sum())),
    )
    with torch.no_grad():
        out, plain = mlet(kjt), mlet.fold()(kjt)
    assert out.keys() == plain.keys() == ["a", "b", "c"]
    assert out.values().shape == (2, 3 * D)
    assert torch.allclose(out.values(), plain.values(), atol=1e-6)


def test_per_table_widths_and_min_rows_keep_some_tables_plain_and_fold_exactly():
    """A k per table (0: plain) and min_rows, the forms of --mlet-hidden-dim and --mlet-min-rows."""
    np.random.seed(5)
    model = mlet_dlrm(tables(), [K, 0, 2 * K], DENSE_IN, DENSE_LAYERS, OVER_LAYERS, min_rows=40)
    mlet = model.sparse_arch.embedding_bag_collection
    # t1 has k = 0; t2 has 30 rows, below min_rows: both stay plain, d-wide, without projection.
    assert mlet.hidden_dims == {"t0": K, "t1": 0, "t2": 0} and mlet.hidden_dim == K
    assert list(mlet.proj) == ["t0"]
    assert [mlet.ebc.embedding_bags[c.name].weight.shape[1] for c in tables()] == [K, D, D]
    plain_before = mlet.ebc.embedding_bags["t1"].weight.detach().clone()
    dense, kjt, _ = make_batch(64, seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        expected = model(dense, kjt)
        folded = mlet.fold()
        assert torch.allclose(folded(kjt).values(), mlet(kjt).values(), atol=1e-6)
        state = fold_torchrec_state_dict(model)
        assert set(state) == set(stock_dlrm().state_dict())
        # The fold leaves plain tables as they are, bit for bit.
        key = "sparse_arch.embedding_bag_collection.embedding_bags.t1.weight"
        assert torch.equal(state[key], mlet.ebc.embedding_bags["t1"].weight)
        assert not torch.equal(state[key], plain_before)  # (it was trained, i.e. perturbed)
        stock = stock_dlrm()
        stock.load_state_dict(state, strict=True)
        diff = (stock(dense, kjt) - expected).abs().max().item()
    assert diff <= 1e-5
    # A mapping by table name: the tables it does not name stay plain.
    by_name = MLETEmbeddingBagCollection(tables(), {"t2": K})
    assert by_name.hidden_dims == {"t0": 0, "t1": 0, "t2": K}


def test_bad_per_table_widths_are_refused_with_one_line():
    with pytest.raises(MLETError, match="hidden_dim lists 2 values for 3 tables"):
        MLETEmbeddingBagCollection(tables(), [K, K])
    with pytest.raises(MLETError, match="hidden_dim of 't1': expected an integer >= 0, got -1"):
        MLETEmbeddingBagCollection(tables(), [K, -1, K])
    with pytest.raises(MLETError, match="hidden_dim names no table called 'nope'"):
        MLETEmbeddingBagCollection(tables(), {"nope": K})
    with pytest.raises(MLETError, match="min_rows: expected an integer >= 0"):
        MLETEmbeddingBagCollection(tables(), K, min_rows=-1)
    with pytest.raises(MLETError, match="table 't1': hidden_dim 4 is below its embedding_dim"):
        MLETEmbeddingBagCollection(tables(), [K, 4, 0])


def test_mlet_init_follows_dlrm_and_mlet_defaults():
    np.random.seed(3)
    mlet = MLETEmbeddingBagCollection(tables(), 256)
    for config in tables():
        table = mlet.ebc.embedding_bags[config.name].weight
        bound = (1 / config.num_embeddings) ** 0.5
        assert table.shape == (config.num_embeddings, 256)
        assert table.abs().max() <= bound and table.abs().max() > 0.9 * bound
        proj = mlet.proj[config.name].weight
        assert proj.shape == (D, 256)
        assert abs(proj.std().item() - 0.25) < 0.02
    # numpy's seed alone reproduces the model.
    np.random.seed(3)
    again = MLETEmbeddingBagCollection(tables(), 256)
    assert all(torch.equal(a, b) for a, b in zip(mlet.state_dict().values(), again.state_dict().values()))


def test_meta_device_projections_get_mlet_init_when_materialised():
    mlet = MLETEmbeddingBagCollection(tables(), K, device="meta", dense_device="meta")
    proj = mlet.proj["t0"]
    proj.to_empty(device="cpu")
    proj.reset_parameters()  # what DistributedModelParallel calls on meta modules
    assert abs(proj.weight.std().item() - 0.25) < 0.1


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(MLETError, match="hidden_dim: expected an integer >= 1"):
        MLETEmbeddingBagCollection(tables(), 0)
    with pytest.raises(MLETError, match="below its embedding_dim"):
        MLETEmbeddingBagCollection(tables(), D - 1)
    assert MLETEmbeddingBagCollection(tables(), D - 1, allow_narrow=True).hidden_dim == D - 1
    with pytest.raises(MLETError, match="unknown projection init"):
        MLETEmbeddingBagCollection(tables(), K, proj_init="kaiming")
    config = EmbeddingBagConfig(name="m", embedding_dim=D, num_embeddings=5, pooling=PoolingType.NONE)
    with pytest.raises(MLETError, match="pooling NONE cannot be folded"):
        MLETEmbeddingBagCollection([config], K)
    with pytest.raises(MLETError, match="no MLETEmbeddingBagCollection"):
        fold_torchrec_state_dict(stock_dlrm())
    model = mlet_dlrm(tables(), K, DENSE_IN, DENSE_LAYERS, OVER_LAYERS)
    with torch.no_grad():
        model.sparse_arch.embedding_bag_collection.proj["t1"].weight[0, 0] = float("nan")
    with pytest.raises(MLETError, match=r"t1\.weight: folded row \d+ is not finite"):
        fold_torchrec_state_dict(model)


def test_sparse_parameters_are_the_k_wide_tables_only():
    model = mlet_dlrm(tables(), K, DENSE_IN, DENSE_LAYERS, OVER_LAYERS)
    tables_ = model.sparse_arch.embedding_bag_collection.ebc.parameters()
    assert {id(p) for p in sparse_parameters(model)} == {id(p) for p in tables_}
    stock = stock_dlrm()
    assert {id(p) for p in sparse_parameters(stock)} == {id(p) for p in stock.sparse_arch.parameters()}


def test_planner_counts_the_k_wide_tables():
    """The planner sizes and places the n x k tables, not the folded n x d ones."""
    topology = Topology(world_size=WORLD, compute_device="cpu")
    constraints = {c.name: ParameterConstraints(sharding_types=["table_wise"]) for c in tables()}
    storage = {}
    for k in (16, 64):
        model = mlet_dlrm(tables(), k, DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_device="meta")
        plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).plan(
            model, get_default_sharders()
        )
        (module_plan,) = plan.plan.values()
        for config in tables():
            (shard,) = module_plan[config.name].sharding_spec.shards
            assert shard.shard_sizes == [config.num_embeddings, k]
        options = EmbeddingEnumerator(topology=topology, batch_size=BATCH, constraints=constraints).enumerate(
            model, get_default_sharders()
        )
        storage[k] = {o.name: o.total_storage.ddr for o in options}
    for n, config in zip(ROWS, tables()):
        assert storage[16][config.name] >= n * 16 * 4
        assert storage[64][config.name] - storage[16][config.name] >= n * (64 - 16) * 4


# --- two processes, gloo, loopback ---------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank, port, world=WORLD):
    """Join the ``world``-rank gloo group on loopback, one thread per rank (in a spawned worker)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pairs on loopback too
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    torch.set_num_threads(1)


def train_steps(dmp, optimizer, steps, rank):
    """Train a DMP ``DLRMTrain`` on ``make_batch``'s batches (seeded by step and rank); the losses."""
    losses = []
    for step in steps:
        dense, kjt, labels = make_batch(BATCH, seed=1000 * step + rank)
        optimizer.zero_grad()
        loss, _ = dmp(Batch(dense_features=dense, sparse_features=kjt, labels=labels))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return torch.tensor(losses)


def run_gloo_workers(worker, out_dir, world=WORLD):
    """Spawn ``world`` processes running ``worker(rank, port, out_dir)``; fail past the deadline."""
    context = mp.start_processes(
        worker, args=(_free_port(), out_dir), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + WORKER_DEADLINE_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} gloo workers did not finish in {WORKER_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return out_dir


def _shards(parameter_sharding):
    spec = parameter_sharding.sharding_spec
    return spec.shards if spec is not None else []


def _plan(model, run):
    """Force each table to its sharding type in ``PLANS[run]``.

    TorchRec's planner offers row-wise sharding on CUDA only, so on the CPU
    that plan is written by hand with TorchRec's own plan helpers; the others
    go through the planner with constraints, as a user would.
    """
    if run == "row_wise":
        from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
        from torchrec.distributed.types import ShardingPlan

        ebc = model.model.sparse_arch.embedding_bag_collection.ebc
        module_plan = construct_module_sharding_plan(
            ebc, {c.name: row_wise() for c in tables()}, device_type="cpu"
        )
        return ShardingPlan({"model.sparse_arch.embedding_bag_collection.ebc": module_plan})
    constraints = {
        c.name: ParameterConstraints(sharding_types=[kind], min_partition=K // 2)
        for c, kind in zip(tables(), PLANS[run])
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD, compute_device="cpu"), constraints=constraints
    )
    return planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)


def _check_fold_failures_stop_every_rank(dmp, plan, out_dir):
    """A diverged table held by rank 1, and a file rank 0 cannot write, both
    raise the same MLETError on both ranks instead of leaving one waiting."""
    (module_plan,) = plan.plan.values()
    on_rank_1 = next(name for name, p in module_plan.items() if p.ranks == [1])
    proj = dmp.module.model.sparse_arch.embedding_bag_collection.proj[on_rank_1].weight
    saved = proj.detach().clone()
    with torch.no_grad():
        proj[0, 0] = float("inf")
    with pytest.raises(MLETError, match=rf"{on_rank_1}\.weight \(shard at row 0\): folded row \d+ is not finite"):
        fold_torchrec_state_dict(dmp.module.model, os.path.join(out_dir, "never.pt"))
    with torch.no_grad():
        proj.copy_(saved)
    assert not os.path.exists(os.path.join(out_dir, "never.pt"))
    with pytest.raises(MLETError, match="cannot write"):
        fold_torchrec_state_dict(dmp.module.model, os.path.join(out_dir, "no-such-dir", "x.pt"))


def _train_fold_worker(rank, port, out_dir):
    """One rank: train MLET under each plan, predict a fixed batch, fold, save."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.models.dlrm import DLRMTrain
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    init_gloo(rank, port)
    for run in PLANS:
        np.random.seed(0)
        torch.manual_seed(0)
        model = DLRMTrain(
            mlet_dlrm(tables(), HIDDEN.get(run, K), DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_device="meta")
        )
        apply_optimizer_in_backward(torch.optim.SGD, sparse_parameters(model), {"lr": 0.5})
        plan = _plan(model, run)
        dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan)
        dense_opt = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())),
            lambda params: torch.optim.SGD(params, lr=0.5),
        )
        optimizer = CombinedOptimizer([dmp.fused_optimizer, dense_opt])
        projections = dmp.module.model.sparse_arch.embedding_bag_collection.proj
        initial = {name: p.weight.detach().clone() for name, p in projections.items()}
        losses = train_steps(dmp, optimizer, range(STEPS), rank).tolist()

        # The projections train too (data-parallel, with the dense optimizer).
        assert all(not torch.equal(p.weight, initial[name]) for name, p in projections.items())
        dmp.eval()
        share = EVAL_BATCH // WORLD
        part = slice_batch(*make_batch(EVAL_BATCH, seed=7), rank * share, (rank + 1) * share)
        with torch.no_grad():
            _, (_, logits, _) = dmp(Batch(dense_features=part[0], sparse_features=part[1], labels=part[2]))
        gathered = [torch.empty_like(logits) for _ in range(WORLD)]
        dist.all_gather(gathered, logits)

        if run == "table_wise":
            _check_fold_failures_stop_every_rank(dmp, plan, out_dir)
        path = os.path.join(out_dir, f"{run}.pt")
        state = fold_torchrec_state_dict(dmp.module.model, path)
        wrapped = fold_torchrec_state_dict(dmp)  # the same, keyed for the DLRMTrain wrapper
        if rank == 0:
            assert wrapped.keys() == {f"model.{key}" for key in state}
            assert all(torch.equal(wrapped[f"model.{key}"], value) for key, value in state.items())
            (module_plan,) = plan.plan.values()
            torch.save(
                {
                    "predictions": torch.cat(gathered),
                    "losses": losses,
                    "plan": {
                        name: (p.sharding_type, [(s.placement.rank(), s.shard_sizes) for s in _shards(p)])
                        for name, p in module_plan.items()
                    },
                },
                os.path.join(out_dir, f"{run}.result.pt"),
            )
        else:
            assert state is None
        dist.barrier()
    leave_gloo()


@pytest.fixture(scope="module")
def distributed_runs(tmp_path_factory):
    return run_gloo_workers(_train_fold_worker, str(tmp_path_factory.mktemp("torchrec_dmp")))


@pytest.mark.parametrize("run", PLANS)
def test_dmp_training_folds_into_stock_dlrm_with_same_predictions(distributed_runs, run):
    result = load_checkpoint(os.path.join(distributed_runs, f"{run}.result.pt"))
    state = load_checkpoint(os.path.join(distributed_runs, f"{run}.pt"))

    widths = [k or D for k in HIDDEN.get(run, [K] * len(ROWS))]
    for config, wanted, width in zip(tables(), PLANS[run], widths):
        kind, shards = result["plan"][config.name]
        assert kind == wanted
        if kind == "row_wise":
            assert sorted(rank for rank, _ in shards) == [0, 1]
            assert sum(size[0] for _, size in shards) == config.num_embeddings
        elif kind == "column_wise":
            assert sorted(rank for rank, _ in shards) == [0, 1]
            assert all(size[1] == K // 2 for _, size in shards)
        elif kind == "data_parallel":
            assert shards == []  # replicated: each rank holds the whole n x k table
        else:
            assert len(shards) == 1 and shards[0][1] == [config.num_embeddings, width]
    if run == "table_wise":  # some table lives on rank 1 and was sent over
        assert {shards[0][0] for _, shards in result["plan"].values()} == {0, 1}

    losses = result["losses"]
    assert np.mean(losses[-50:]) < 0.8 * np.mean(losses[:50]), "MLET did not train"

    stock = stock_dlrm()
    stock.load_state_dict(state, strict=True)
    dense, kjt, _ = make_batch(EVAL_BATCH, seed=7)
    with torch.no_grad():
        predictions = stock(dense, kjt).squeeze(-1)
    diff = (predictions - result["predictions"]).abs().max().item()
    print(
        f"{run}: loss {np.mean(losses[:50]):.3f} -> {np.mean(losses[-50:]):.3f}, "
        f"max |stock folded - distributed MLET| = {diff:.3g}"
    )
    assert diff <= 1e-5


# --- DLRM's own TorchRec trainer, patched -----------------------------------

@pytest.mark.parametrize("table_dtype", ["fp32", "fp16"])
def test_dlrm_integration_torchrec_main_trains_mlet_and_writes_a_stock_dlrm_state_dict(
    patched_dlrm, tmp_path, table_dtype
):
    """DLRM's own TorchRec trainer, patched by `dlrm-mlet patch` like dlrm_s_pytorch.py;
    with ``--mlet-table-dtype fp16`` too (fbgemm stores the k-wide tables in fp16)."""
    from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, DEFAULT_INT_NAMES

    script_dir = os.path.join(patched_dlrm, "torchrec_dlrm")
    folded = str(tmp_path / "folded.pt")
    dumped = str(tmp_path / "predictions.pt")
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    d, k = 8, 32
    # DLRM's forms of --mlet-hidden-dim: one K per table, 0 keeps a table plain; and
    # --mlet-min-rows, which keeps the 40-row tables plain too.
    rows = [40 if i % 4 == 0 else 200 for i in range(len(DEFAULT_CAT_NAMES))]
    dims = [0 if i % 3 == 0 else (k if i % 2 else 2 * k) for i in range(len(DEFAULT_CAT_NAMES))]
    trained = sum(1 for n, kk in zip(rows, dims) if kk and n >= 100)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        os.path.join(os.path.dirname(__file__), "torchrec_harness.py"), dumped, "--",
        "--num_embeddings_per_feature", ",".join(map(str, rows)), "--embedding_dim", str(d),
        "--dense_arch_layer_sizes", f"16,{d}", "--over_arch_layer_sizes", "16,1",
        "--batch_size", "32", "--limit_train_batches", "30", "--limit_val_batches", "2",
        "--limit_test_batches", "2", "--learning_rate", "0.1", "--seed", "0",
        "--mlet-hidden-dim", "-".join(map(str, dims)), "--mlet-min-rows", "100",
        "--mlet_proj_init", "xavier", "--mlet-folded-path", folded, "--mlet-table-dtype", table_dtype,
    ]
    proc = subprocess.run(cmd, cwd=script_dir, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "AUROC over test set" in proc.stdout
    stored = "" if table_dtype == "fp32" else f" ({table_dtype} tables)"
    assert f"MLET: {trained} of {len(rows)} tables trained as n x {k}-{2 * k} -> {d}{stored}\n" in proc.stdout

    state = load_checkpoint(folded)
    configs = [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=d, num_embeddings=n, feature_names=[f])
        for f, n in zip(DEFAULT_CAT_NAMES, rows)
    ]
    stock = DLRM(EmbeddingBagCollection(tables=configs), len(DEFAULT_INT_NAMES), [16, d], [16, 1])
    stock.load_state_dict(state, strict=True)
    assert all(state[f"sparse_arch.embedding_bag_collection.embedding_bags.t_{f}.weight"].shape == (n, d)
               for f, n in zip(DEFAULT_CAT_NAMES, rows))
    # The trained MLET model, sharded over the 2 ranks, predicted this batch just before the fold
    # (tests/torchrec_harness.py); the folded tables in stock DLRM must predict the same.
    batch = load_checkpoint(dumped)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=DEFAULT_CAT_NAMES, values=batch["indices"].flatten(),
        lengths=torch.ones(batch["indices"].numel(), dtype=torch.long),
    )
    with torch.no_grad():
        logits = stock(batch["dense"], kjt)
    assert logits.shape == batch["logits"].shape == (16, 1)
    assert batch["logits"].std() > 1e-4  # distinct predictions (measured std 5.6e-3)
    # Measured: 7.5e-9; adding N(0, 0.01^2) noise to one folded table moves them by 3.2e-4.
    diff = (logits - batch["logits"]).abs().max().item()
    assert diff <= 1e-5, diff
