"""Run patched TorchRec ``dlrm_main.main`` under torchrun, then dump the trained MLET model's predictions.

Used by test_torchrec.py, from DLRM's ``torchrec_dlrm`` folder:
``torchrun --nproc_per_node=2 torchrec_harness.py OUT -- DLRM_MAIN_ARGS``.
When the patched trainer, done training, folds (``dlrm_mlet.torchrec.trainer.fold_torchrec_state_dict``),
this first predicts one fixed batch with the trained model as it is sharded over
the ranks (each rank its share of the batch, gathered), then folds as the trainer
asked. Rank 0 saves the batch and the predictions, so the test can compare them
with stock TorchRec DLRM loaded (strictly) with the folded file, and what it
sharded the collection as and which fused optimizer its tables train with.
"""

import os
import sys

import torch
import torch.distributed as dist
from torchrec import KeyedJaggedTensor
from torchrec.datasets.criteo import DEFAULT_CAT_NAMES, DEFAULT_INT_NAMES

import dlrm_mlet.torchrec.trainer as mlet_trainer

BATCH = 16  # the whole batch; each rank predicts BATCH / world of it
out = sys.argv[1]
argv = sys.argv[sys.argv.index("--") + 1:]
sys.path.insert(0, os.getcwd())  # dlrm_main.py and its data helpers
import dlrm_main  # noqa: E402

pipelines = []


class RecordedPipeline(dlrm_main.TrainPipelineSparseDist):
    """The trainer's pipeline, kept so its rewritten forwards can be undone before predicting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pipelines.append(self)


def fixed_batch(rows):
    """One id per feature and sample (below ``rows``, the smallest table), the same on every rank."""
    g = torch.Generator().manual_seed(11)
    dense = torch.randn(BATCH, len(DEFAULT_INT_NAMES), generator=g)
    indices = torch.randint(0, rows, (len(DEFAULT_CAT_NAMES), BATCH), generator=g)
    return dense, indices


def kjt(indices):
    return KeyedJaggedTensor.from_lengths_sync(
        keys=DEFAULT_CAT_NAMES, values=indices.flatten(),
        lengths=torch.ones(indices.numel(), dtype=torch.long),
    )


def table_optimizers(collection):
    """The fused optimizer of each fbgemm table-batched kernel holding this rank's tables."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    return [m.optimizer.name for lookup in collection.ebc._lookups for m in lookup.modules()
            if isinstance(m, SplitTableBatchedEmbeddingBagsCodegen)]


fold = mlet_trainer.fold_torchrec_state_dict
folds = []


def predict_then_fold(model, path=None):
    for pipeline in pipelines:
        pipeline.detach()
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = min(c.num_embeddings for c in model.sparse_arch.embedding_bag_collection.embedding_bag_configs())
    dense, indices = fixed_batch(rows)
    share = BATCH // world
    part = slice(rank * share, (rank + 1) * share)
    model.eval()
    with torch.no_grad():
        logits = model(dense[part], kjt(indices[:, part].contiguous()))
    gathered = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(gathered, logits)
    if rank == 0:
        collection = model.sparse_arch.embedding_bag_collection
        torch.save({"dense": dense, "indices": indices, "logits": torch.cat(gathered),
                    "collection": type(collection).__name__, "table_optimizers": table_optimizers(collection)}, out)
    folds.append(path)
    return fold(model, path)


mlet_trainer.fold_torchrec_state_dict = predict_then_fold
dlrm_main.TrainPipelineSparseDist = RecordedPipeline
dlrm_main.main(argv)
assert folds, "the patched trainer never folded"
# Every output is written: exit without the interpreter's teardown of the gloo group, which
# aborts now and then ("terminate called without an active exception"; see conftest).
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
