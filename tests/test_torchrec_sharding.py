"""MLET's TorchRec sharder: each rank projects before the all-to-all, and the run stays the same.

Two and four gloo processes train the same MLET DLRM from the same init on the
same batches twice: with TorchRec's default sharders (projections data-parallel
after the exchange: the reference) and with ``dlrm_mlet.torchrec.sharders()``,
under table-wise, row-wise, table-row-wise (4 ranks as 2 hosts of 2),
column-wise, planner-made and mixed plans. Loss curves, predictions and folded
tables must agree; the output distribution must carry what a stock d-wide
model's carries; projections must sit with their shards and stay identical
across the ranks that replicate them; a ``torch.distributed.checkpoint`` round
trip must resume the run exactly; the folded file loads strictly into stock
TorchRec DLRM. Then DLRM's own TorchRec trainer runs under the new sharder for
its three interaction types with both Adagrads.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec")

import torch.distributed as dist  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: E402
from torchrec.datasets.utils import Batch  # noqa: E402
from torchrec.distributed.model_parallel import get_default_sharders  # noqa: E402
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology  # noqa: E402
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator  # noqa: E402
from torchrec.distributed.types import ShardingType  # noqa: E402
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection  # noqa: E402

from conftest import leave_gloo  # noqa: E402
from dlrm_mlet.checkpoint_io import load_checkpoint  # noqa: E402
from dlrm_mlet.torchrec import (  # noqa: E402
    MLETEmbeddingBagCollection,
    MLETEmbeddingBagCollectionSharder,
    ShardedMLETEmbeddingBagCollection,
    fold_torchrec_state_dict,
    mlet_dlrm,
    sharders,
    sparse_parameters,
)
from test_torchrec import (  # noqa: E402
    BATCH, DENSE_IN, DENSE_LAYERS, EVAL_BATCH, K, OVER_LAYERS, ROWS, _free_port,
    init_gloo, make_batch, run_gloo_workers, train_steps, slice_batch, stock_dlrm, tables,
)

D = 8
COLLECTION = "model.sparse_arch.embedding_bag_collection"
STEPS, MORE, LR = 24, 3, 0.1
# Per world size, run name -> each table's plan (TorchRec's plan helper and its arguments), and the
# run's hidden_dim when not K. The 4-rank runs see 2 hosts of 2 ranks (LOCAL_WORLD_SIZE=2).
PLANS = {
    2: {
        "table_wise": {"t0": ("table_wise", {"rank": 0}), "t1": ("table_wise", {"rank": 1}),
                       "t2": ("table_wise", {"rank": 1})},
        "row_wise": {t: ("row_wise", {}) for t in ("t0", "t1", "t2")},
        # t1: four column shards, two on each rank.
        "column_wise": {"t0": ("column_wise", {"ranks": [0, 1]}), "t1": ("column_wise", {"ranks": [1, 0, 1, 0]}),
                        "t2": ("column_wise", {"ranks": [1, 0]})},
        # t1 plain (k = 0) and column-wise: its d-wide shards are concatenated, not added. (Not the
        # mean-pooled t2 row-wise here: TorchRec 1.8 then divides the other sharding types' SUM features
        # by their bag lengths too, in stock TorchRec as much as with MLET.)
        "mixed": {"t0": ("row_wise", {}), "t1": ("column_wise", {"ranks": [0, 1]}), "t2": ("data_parallel", {})},
        "planner": None,  # the planner, told table-column-wise / table-wise / column-wise
        # TorchRec's gradient division off: its tables then get summed gradients; the projections
        # still get DDP's average, as in the reference.
        "row_wise_undivided": {t: ("row_wise", {}) for t in ("t0", "t1", "t2")},
    },
    4: {
        "table_wise": {"t0": ("table_wise", {"rank": 3}), "t1": ("table_wise", {"rank": 2}),
                       "t2": ("table_wise", {"rank": 1})},
        "row_wise": {t: ("row_wise", {}) for t in ("t0", "t1", "t2")},
        "table_row_wise": {"t0": ("table_row_wise", {"host_index": 1}), "t1": ("table_row_wise", {"host_index": 0}),
                           "t2": ("table_row_wise", {"host_index": 1})},
        "column_wise": {"t0": ("column_wise", {"ranks": [3, 0, 2, 1]}), "t1": ("column_wise", {"ranks": [2, 0]}),
                        "t2": ("column_wise", {"ranks": [1, 3]})},
    },
}
HIDDEN = {"mixed": [2 * K, 0, K]}
PLANNER_TYPES = ("table_column_wise", "table_wise", "column_wise")
LOCAL = {2: 2, 4: 2}


def _hidden(run):
    return HIDDEN.get(run, K)


def _dlrm(run):
    return mlet_dlrm(tables(), _hidden(run), DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_device="meta")


# --- one process -------------------------------------------------------------


def test_sharders_are_torchrec_defaults_plus_mlet_and_offer_no_grid_sharding():
    defaults = [type(s) for s in get_default_sharders()]
    ours = sharders()
    assert [type(s) for s in ours] == defaults + [MLETEmbeddingBagCollectionSharder]
    mlet = ours[-1]
    assert mlet.module_type is MLETEmbeddingBagCollection
    assert mlet.sharded_module_type is ShardedMLETEmbeddingBagCollection
    ebc = next(s for s in ours if s.module_type is EmbeddingBagCollection)
    assert mlet.fused_params is ebc.fused_params
    for device in ("cpu", "cuda"):
        offered = set(ebc.sharding_types(device)) - {ShardingType.GRID_SHARD.value}
        assert set(mlet.sharding_types(device)) == offered
    assert ShardingType.ROW_WISE.value in mlet.sharding_types("cuda")


def test_planner_under_mlet_sharders_places_the_collection_at_its_k_wide_size():
    """The plan is the MLET collection's (so the MLET sharder shards it), sized as n x k tables."""
    topology = Topology(world_size=2, compute_device="cpu")
    constraints = {c.name: ParameterConstraints(sharding_types=["table_wise"]) for c in tables()}
    storage = {}
    for k in (16, 64):
        model = mlet_dlrm(tables(), k, DENSE_IN, DENSE_LAYERS, OVER_LAYERS, table_device="meta")
        plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).plan(model, sharders())
        assert list(plan.plan) == ["sparse_arch.embedding_bag_collection"]
        module_plan = plan.plan["sparse_arch.embedding_bag_collection"]
        for config in tables():
            (shard,) = module_plan[config.name].sharding_spec.shards
            assert shard.shard_sizes == [config.num_embeddings, k]
        options = EmbeddingEnumerator(topology=topology, batch_size=BATCH, constraints=constraints).enumerate(
            model, sharders()
        )
        storage[k] = {o.name: o.total_storage.ddr for o in options}
    for n, config in zip(ROWS, tables()):
        assert storage[16][config.name] >= n * 16 * 4
        assert storage[64][config.name] - storage[16][config.name] >= n * (64 - 16) * 4


def test_trainer_rowwise_adagrad_option_needs_adagrad_and_mlet():
    import argparse

    from torchrec.optim import RowWiseAdagrad

    from dlrm_mlet.torchrec.trainer import add_arguments, embedding_optimizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--adagrad", action="store_true")
    add_arguments(parser)
    parse = parser.parse_args
    assert embedding_optimizer(parse(["--mlet-hidden-dim", "32"]), torch.optim.SGD) is torch.optim.SGD
    args = parse(["--mlet-hidden-dim", "32", "--adagrad", "--mlet_rowwise_adagrad"])
    assert embedding_optimizer(args, torch.optim.Adagrad) is RowWiseAdagrad
    with pytest.raises(SystemExit, match="^ERROR: --mlet-rowwise-adagrad needs --adagrad"):
        embedding_optimizer(parse(["--mlet-hidden-dim", "32", "--mlet-rowwise-adagrad"]), torch.optim.SGD)
    with pytest.raises(SystemExit, match="^ERROR: --mlet-rowwise-adagrad has no effect without --mlet-hidden-dim"):
        embedding_optimizer(parse(["--adagrad", "--mlet-rowwise-adagrad"]), torch.optim.Adagrad)


# --- gloo ranks: default sharders against the MLET sharder ------------------


def _plan(model, run, world, mlet):
    """The run's plan for the MLET collection (MLET sharder) or for its inner ``ebc`` (defaults)."""
    from torchrec.distributed import sharding_plan
    from torchrec.distributed.types import ShardingPlan

    collection = model.model.sparse_arch.embedding_bag_collection
    if PLANS[world][run] is None:
        constraints = {
            c.name: ParameterConstraints(sharding_types=[kind], min_partition=K // 2)
            for c, kind in zip(tables(), PLANNER_TYPES)
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, local_world_size=LOCAL[world], compute_device="cpu"),
            constraints=constraints,
        )
        return planner.collective_plan(model, sharders() if mlet else get_default_sharders(), dist.GroupMember.WORLD)
    if isinstance(collection, MLETEmbeddingBagCollection) and not mlet:
        module, path, sharder = collection.ebc, f"{COLLECTION}.ebc", None
    elif isinstance(collection, MLETEmbeddingBagCollection):
        module, path, sharder = collection, COLLECTION, MLETEmbeddingBagCollectionSharder()
    else:  # a stock d-wide model
        module, path, sharder = collection, COLLECTION, None
    kinds = {t: getattr(sharding_plan, name)(**kw) for t, (name, kw) in PLANS[world][run].items()}
    return ShardingPlan({path: sharding_plan.construct_module_sharding_plan(
        module, kinds, sharder=sharder, local_size=LOCAL[world], world_size=world, device_type="cpu"
    )})


def _build(run, world, mlet, seed=0, stock=False):
    """DMP DLRM (MLET or ``stock`` d-wide): fused SGD on the tables, Adagrad on the rest (projections included).

    Not Adagrad on the tables: it divides each element's step by the root of its
    summed squared gradients, so a rounding-level difference in a near-zero
    gradient of a rarely seen row becomes a visible one (measured: folded
    tables 2.6e-4 apart after 24 row-wise steps, against 1e-8 with SGD), and
    "the same run" could only be checked loosely. The trainer test below
    trains the tables with both Adagrads.
    """
    from torchrec.distributed import DistributedModelParallel
    from torchrec.models.dlrm import DLRMTrain
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    np.random.seed(seed)
    torch.manual_seed(seed)
    model = DLRMTrain(stock_dlrm() if stock else _dlrm(run))
    apply_optimizer_in_backward(torch.optim.SGD, sparse_parameters(model), {"lr": LR})
    dmp = DistributedModelParallel(
        model, device=torch.device("cpu"), plan=_plan(model, run, world, mlet), sharders=sharders() if mlet else None
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda params: torch.optim.Adagrad(params, lr=LR)
    )
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), dense


def _predict(dmp, rank, world):
    """The eval batch's predictions, each rank its share, gathered."""
    dmp.eval()
    share = EVAL_BATCH // world
    part = slice_batch(*make_batch(EVAL_BATCH, seed=7), rank * share, (rank + 1) * share)
    with torch.no_grad():
        _, (_, logits, _) = dmp(Batch(dense_features=part[0], sparse_features=part[1], labels=part[2]))
    dmp.train()
    gathered = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(gathered, logits)
    return torch.cat(gathered)


def _sent_widths(dmp, rank):
    """Per sharding type, the width of the pooled rows this rank hands to TorchRec's output dist."""
    collection = dmp.module.model.sparse_arch.embedding_bag_collection
    ebc = getattr(collection, "ebc", collection)
    widths, hooks = {}, []
    for kind, output_dist in zip(ebc._sharding_types, ebc._output_dists):
        target = getattr(output_dist, "output_dist", output_dist)  # the MLET sharder's projecting wrapper
        hooks.append(target.register_forward_pre_hook(
            lambda module, args, kind=kind: widths.__setitem__(kind, args[0].shape[-1] if args[0].dim() == 2 else 0)
        ))
    dense, kjt, labels = make_batch(BATCH, seed=rank)
    with torch.no_grad():
        dmp(Batch(dense_features=dense, sparse_features=kjt, labels=labels))
    for hook in hooks:
        hook.remove()
    return widths


def _projection_shards(dmp):
    """This rank's projection parameters (name -> tensor) and which of them DDP was told to leave alone."""
    collection = dmp.module.model.sparse_arch.embedding_bag_collection
    held = {name: p.detach().clone() for name, p in collection.proj.named_parameters()}
    return held, set(collection.sharded_parameter_names())


def _checkpoint_round_trip(dmp, optimizer, dense, run, world, rank, out_dir):
    """Save model and optimizer with torch.distributed.checkpoint; a fresh model loads them and trains on."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(out_dir, f"{world}.{run}.dcp")
    # The dense optimizer's state: the fused SGD has none (and TorchRec saves none for it).
    dcp.save({"model": dmp.state_dict(), "optimizer": dense.state_dict()}, checkpoint_id=path)
    fresh, fresh_optimizer, fresh_dense = _build(run, world, mlet=True, seed=1)  # another init: the load replaces it
    target = {"model": fresh.state_dict(), "optimizer": fresh_dense.state_dict()}
    dcp.load(target, checkpoint_id=path)
    fresh.load_state_dict(target["model"])
    fresh_dense.load_state_dict(target["optimizer"])
    steps = range(STEPS, STEPS + MORE)
    return (train_steps(fresh, fresh_optimizer, steps, rank) - train_steps(dmp, optimizer, steps, rank)).abs().max().item()


def _compare_worker(rank, port, out_dir, world):
    if world == 4:
        os.environ["LOCAL_WORLD_SIZE"] = str(LOCAL[world])  # 2 hosts of 2 ranks, for table-row-wise
    from torchrec.distributed.comm_ops import set_gradient_division

    init_gloo(rank, port, world)
    for run in PLANS[world]:
        set_gradient_division(not run.endswith("_undivided"))
        reference, reference_opt, _ = _build(run, world, mlet=False)
        reference_widths = _sent_widths(reference, rank)
        reference_losses = train_steps(reference, reference_opt, range(STEPS), rank)
        reference_predictions = _predict(reference, rank, world)
        reference_folded = fold_torchrec_state_dict(reference.module.model)
        del reference, reference_opt

        stock_widths = None
        if PLANS[world][run] is not None:
            stock, _, _ = _build(run, world, mlet=False, stock=True)
            stock_widths = _sent_widths(stock, rank)
            del stock

        dmp, optimizer, dense = _build(run, world, mlet=True)
        collection = dmp.module.model.sparse_arch.embedding_bag_collection
        assert type(collection) is ShardedMLETEmbeddingBagCollection
        widths = _sent_widths(dmp, rank)
        losses = train_steps(dmp, optimizer, range(STEPS), rank)
        predictions = _predict(dmp, rank, world)
        held, ddp_ignores = _projection_shards(dmp)
        folded = fold_torchrec_state_dict(dmp.module.model, os.path.join(out_dir, f"{world}.{run}.pt"))
        if rank == 0:  # (now: like a state dict, it shares the dense parameters, which train on below)
            fold_diff = max((folded[key] - value).abs().max().item() for key, value in reference_folded.items())
        resumed_diff = None
        if world == 2:
            resumed_diff = _checkpoint_round_trip(dmp, optimizer, dense, run, world, rank, out_dir)

        gathered = [None] * world
        dist.all_gather_object(gathered, {
            "widths": (reference_widths, stock_widths, widths), "held": held, "ddp_ignores": ddp_ignores,
            "loss_diff": (losses - reference_losses).abs().max().item(), "resumed_diff": resumed_diff,
        })
        if rank == 0:
            (module_plan,) = dmp._plan.plan.values()
            torch.save({
                "ranks": gathered, "losses": losses, "reference_losses": reference_losses,
                "predictions": predictions, "reference_predictions": reference_predictions,
                "fold_diff": fold_diff,
                "plan": {
                    name: (p.sharding_type, [(s.placement.rank(), s.shard_offsets, s.shard_sizes)
                                             for s in (p.sharding_spec.shards if p.sharding_spec else [])])
                    for name, p in module_plan.items()
                },
            }, os.path.join(out_dir, f"{world}.{run}.result.pt"))
        del dmp, optimizer, dense
        dist.barrier()
    leave_gloo()


def _compare_worker_2(rank, port, out_dir):
    _compare_worker(rank, port, out_dir, 2)


def _compare_worker_4(rank, port, out_dir):
    _compare_worker(rank, port, out_dir, 4)


@pytest.fixture(scope="module")
def runs_2(tmp_path_factory):
    return run_gloo_workers(_compare_worker_2, str(tmp_path_factory.mktemp("mlet_sharder_2")), world=2)


@pytest.fixture(scope="module")
def runs_4(tmp_path_factory):
    return run_gloo_workers(_compare_worker_4, str(tmp_path_factory.mktemp("mlet_sharder_4")), world=4)


CASES = [(2, run) for run in PLANS[2]] + [(4, run) for run in PLANS[4]]


@pytest.mark.parametrize("world,run", CASES, ids=[f"{w}ranks-{r}" for w, r in CASES])
def test_mlet_sharder_trains_as_the_data_parallel_projection_and_sends_d_wide(request, world, run):
    out_dir = request.getfixturevalue(f"runs_{world}")
    result = load_checkpoint(os.path.join(out_dir, f"{world}.{run}.result.pt"))
    ranks = result["ranks"]
    hidden = _hidden(run)
    k_of = dict(zip(("t0", "t1", "t2"), hidden if isinstance(hidden, list) else [hidden] * 3))
    plan = result["plan"]
    if run == "planner":
        assert [plan[t][0] for t in ("t0", "t1", "t2")] == list(PLANNER_TYPES)

    # Same init, same batches: the loss curve, the predictions and the folded tables are the
    # reference's, to float32 rounding (summation order).
    reference = result["reference_losses"]
    print(f"{world} ranks, {run}: loss {reference[:6].mean():.3f} -> {reference[-6:].mean():.3f}; MLET sharder - "
          f"reference: losses {max(r['loss_diff'] for r in ranks):.2g}, predictions "
          f"{(result['predictions'] - result['reference_predictions']).abs().max():.2g}, folded tables "
          f"{result['fold_diff']:.2g}")
    assert reference[-6:].mean() < 0.9 * reference[:6].mean(), "the reference did not train"
    assert max(r["loss_diff"] for r in ranks) <= 1e-5
    torch.testing.assert_close(result["predictions"], result["reference_predictions"], rtol=1e-5, atol=1e-5)
    assert result["fold_diff"] <= 1e-5

    # What each rank hands to the output dist: the reference k per feature, the MLET sharder d per
    # feature (d per column shard): what a stock d-wide model hands over for table-/row-wise plans.
    for rank, r in enumerate(ranks):
        reference_widths, stock_widths, widths = r["widths"]
        for kind, width in widths.items():
            if kind == ShardingType.DATA_PARALLEL.value:
                continue
            if kind in (ShardingType.COLUMN_WISE.value, ShardingType.TABLE_COLUMN_WISE.value):
                shards = sum(1 for t, (kind_, s) in plan.items() if kind_ == kind and k_of[t]
                             for owner, _, _ in s if owner == rank)
                plain = sum(size[1] for t, (kind_, s) in plan.items() if kind_ == kind and not k_of[t]
                            for owner, _, size in s if owner == rank)
                assert width == shards * D + plain, (rank, kind)
            elif stock_widths is not None:
                assert width == stock_widths[kind], (rank, kind)
            assert reference_widths[kind] >= width
            if width and all(k_of.values()) and kind not in (ShardingType.COLUMN_WISE.value,
                                                             ShardingType.TABLE_COLUMN_WISE.value):
                assert reference_widths[kind] == width * K // D  # today's MLET: k/d times as much

    # Projections sit with their shards: whole where a rank holds whole rows, B[:, c] per column shard;
    # DDP leaves all but the data-parallel ones alone; replicas stay identical (their gradients are summed).
    for table, (kind, shards) in plan.items():
        if not k_of[table]:
            assert not any(name.startswith(f"{table}.") for r in ranks for name in r["held"])
            continue
        for rank, r in enumerate(ranks):
            names = {name for name in r["held"] if name.startswith(f"{table}.")}
            mine = [(offsets, sizes) for owner, offsets, sizes in shards if owner == rank]
            prefix = f"proj.{table}."
            if kind == ShardingType.DATA_PARALLEL.value:
                assert names == {f"{table}.weight"} and prefix + "weight" not in r["ddp_ignores"]
            elif not mine:
                assert names == set()
            elif all(sizes[1] == k_of[table] for _, sizes in mine):
                assert names == {f"{table}.weight"} and prefix + "weight" in r["ddp_ignores"]
            else:
                assert names == {f"{table}.columns.{offsets[1]}" for offsets, _ in mine}
                assert all(prefix + name.split(".", 1)[1] in r["ddp_ignores"] for name in names)
        replicas = [r["held"][f"{table}.weight"] for r in ranks if f"{table}.weight" in r["held"]]
        assert all(torch.equal(replicas[0], w) for w in replicas[1:])
        if kind == ShardingType.TABLE_ROW_WISE.value:
            assert len(replicas) == 2  # the two ranks of its host, not the other host's

    if world == 2:  # model and optimizer state, projection shards included, resume the run exactly
        assert max(r["resumed_diff"] for r in ranks) <= 1e-6

    stock = stock_dlrm()
    stock.load_state_dict(load_checkpoint(os.path.join(out_dir, f"{world}.{run}.pt")), strict=True)
    dense, kjt, _ = make_batch(EVAL_BATCH, seed=7)
    with torch.no_grad():
        predictions = stock(dense, kjt).squeeze(-1)
    torch.testing.assert_close(predictions, result["predictions"], rtol=1e-5, atol=1e-5)


# --- DLRM's own TorchRec trainer, patched, under the MLET sharder -----------

TRAINER_CASES = [(kind, opt) for kind in ("original", "dcn", "projection") for opt in ("adagrad", "rowwise")]


def _stock_trainer_model(kind, configs, d):
    ebc = EmbeddingBagCollection(tables=configs)
    from torchrec.datasets.criteo import DEFAULT_INT_NAMES

    common = dict(dense_in_features=len(DEFAULT_INT_NAMES), dense_arch_layer_sizes=[16, d],
                  over_arch_layer_sizes=[16, 1])
    if kind == "dcn":
        return DLRM_DCN(ebc, dcn_num_layers=2, dcn_low_rank_dim=4, **common)
    if kind == "projection":
        return DLRM_Projection(ebc, interaction_branch1_layer_sizes=[16, 2 * d],
                               interaction_branch2_layer_sizes=[16, 2 * d], **common)
    return DLRM(ebc, **common)


@pytest.mark.parametrize("kind,optimizer", TRAINER_CASES, ids=[f"{k}-{o}" for k, o in TRAINER_CASES])
def test_dlrm_integration_torchrec_main_under_the_mlet_sharder_folds_into_stock_dlrm(
    patched_dlrm, tmp_path, kind, optimizer
):
    """DLRM's TorchRec trainer (``--interaction_type``, ``--adagrad`` with or without
    ``--mlet-rowwise-adagrad``) on 2 gloo ranks; the folded file loads into a stock model of that type."""
    from torchrec.datasets.criteo import DEFAULT_CAT_NAMES

    script_dir = os.path.join(patched_dlrm, "torchrec_dlrm")
    folded, dumped = str(tmp_path / "folded.pt"), str(tmp_path / "predictions.pt")
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    d, k = D, 32
    rows = [60 + 10 * (i % 5) for i in range(len(DEFAULT_CAT_NAMES))]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        os.path.join(os.path.dirname(__file__), "torchrec_harness.py"), dumped, "--",
        "--num_embeddings_per_feature", ",".join(map(str, rows)), "--embedding_dim", str(d),
        "--dense_arch_layer_sizes", f"16,{d}", "--over_arch_layer_sizes", "16,1",
        "--interaction_type", kind, "--dcn_num_layers", "2", "--dcn_low_rank_dim", "4",
        "--interaction_branch1_layer_sizes", f"16,{2 * d}", "--interaction_branch2_layer_sizes", f"16,{2 * d}",
        "--batch_size", "32", "--limit_train_batches", "20", "--limit_val_batches", "2",
        "--limit_test_batches", "2", "--learning_rate", "0.1", "--seed", "0", "--adagrad",
        "--mlet-hidden-dim", str(k), "--mlet-folded-path", folded, "--print_sharding_plan",
    ] + (["--mlet-rowwise-adagrad"] if optimizer == "rowwise" else [])
    proc = subprocess.run(cmd, cwd=script_dir, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "AUROC over test set" in proc.stdout
    # The MLET sharder planned and sharded the collection itself (not its inner k-wide collection).
    assert "\nmodel.sparse_arch.embedding_bag_collection\n" in proc.stdout
    assert "embedding_bag_collection.ebc\n" not in proc.stdout
    harness = load_checkpoint(dumped)
    assert harness["collection"] == "ShardedMLETEmbeddingBagCollection"
    expected = "EXACT_ROWWISE_ADAGRAD" if optimizer == "rowwise" else "EXACT_ADAGRAD"
    assert set(harness["table_optimizers"]) == {expected}

    configs = [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=d, num_embeddings=n, feature_names=[f])
        for f, n in zip(DEFAULT_CAT_NAMES, rows)
    ]
    stock = _stock_trainer_model(kind, configs, d)
    stock.load_state_dict(load_checkpoint(folded), strict=True)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=DEFAULT_CAT_NAMES, values=harness["indices"].flatten(),
        lengths=torch.ones(harness["indices"].numel(), dtype=torch.long),
    )
    with torch.no_grad():
        logits = stock(harness["dense"], kjt)
    assert logits.shape == harness["logits"].shape == (16, 1)
    assert harness["logits"].std() > 1e-4  # distinct predictions
    assert (logits - harness["logits"]).abs().max().item() <= 1e-5
