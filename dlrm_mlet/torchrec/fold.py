"""``fold_torchrec``: a trained TorchRec MLET model, sharded or not, as a stock state dict.

The result is the state dict of the same model built with plain d-wide
``EmbeddingBagCollection``s. Kept apart from the collection because this is
the distributed half: walking a ``DistributedModelParallel`` model's shards,
folding each where it lives and streaming the folded rows to rank 0
(``core/gather.py``, the same stream DLRM's distributed save uses).
"""

import warnings
from collections import OrderedDict

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec.distributed import DistributedModelParallel

from ..core.folding import fold_weight
from ..core.gather import comm_device, stream_to_rank0
from ..errors import MLETError
from ..files import atomic_save
from .collection import MLETEmbeddingBagCollection


def _unwrap(model):
    """The module whose ``state_dict`` keys and submodule names agree."""
    return model.module if isinstance(model, DistributedModelParallel) else model


def _table_keys(root):
    """Map each state-dict key inside an MLET collection to (folded key, projection).

    A table key maps to its key in the plain collection and its projection
    weight (None for a plain table, which is renamed only); a projection key
    maps to (None, None): it is folded into its table.
    """
    keys = {}
    for name, module in root.named_modules():
        if not isinstance(module, MLETEmbeddingBagCollection):
            continue
        prefix = f"{name}." if name else ""
        for config in module.embedding_bag_configs():
            table = config.name
            proj = module.proj[table].weight if table in module.proj else None
            keys[f"{prefix}ebc.embedding_bags.{table}.weight"] = (f"{prefix}embedding_bags.{table}.weight", proj)
            if proj is not None:
                keys[f"{prefix}proj.{table}.weight"] = (None, None)
    return keys


def fold_torchrec(model, path=None):
    """Fold every MLET collection in ``model``; return the plain model's state dict.

    ``model`` is an MLET model, plain or wrapped in ``DistributedModelParallel``
    (table-wise, row-wise, column-wise, data-parallel and mixed plans). The
    result has the keys and shapes of the same model built with plain d-wide
    ``EmbeddingBagCollection``s, on the CPU, and loads into it with
    ``strict=True``; fp16 or bf16 k-wide tables fold in float32 into float32
    tables. Distributed, every rank must call this: each rank folds
    its own shards (a column shard into a partial product, since ``A @ B.T``
    is the sum of its column blocks' products) and sends the folded rows to
    rank 0 in chunks, so rank 0 holds the folded tables plus one folded local
    shard and one chunk. Rank 0 gets the state dict and writes it to ``path``
    atomically; other ranks get None. Any failure raises on every rank.
    """
    root = _unwrap(model)
    keys = _table_keys(root)
    if not keys:
        raise MLETError("the model has no MLETEmbeddingBagCollection; there is nothing to fold")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    out = OrderedDict() if rank == 0 else None
    error = None  # a failure on rank 0 alone; the others learn it at the end
    for key, value in root.state_dict().items():
        new_key, proj = keys.get(key, (key, None))
        if new_key is None:
            continue  # a projection: folded into its table
        if isinstance(value, DTensor):
            raise MLETError(
                f"{key} is a DTensor (TorchRec's 2D-parallel or output_dtensor mode); "
                "fold_torchrec supports DistributedModelParallel's ShardedTensor tables only"
            )
        gathered = isinstance(value, ShardedTensor)
        if gathered:
            with warnings.catch_warnings():
                # TorchRec 1.8 still hands out ShardedTensors; its deprecation
                # notice is not something the user can act on.
                warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
                value = _gather_folded(value, proj, new_key, rank)
        if rank != 0 or error:
            continue
        try:
            if proj is not None and not gathered:
                value = fold_weight(value, proj, new_key)
            elif proj is not None and not bool(torch.isfinite(value).all()):
                raise MLETError(f"{new_key}: the folded table is not finite (shards overflowed)")
            out[new_key] = value.detach().cpu()
        except MLETError as exc:
            error = str(exc)
    if rank == 0 and path is not None and not error:
        try:
            atomic_save(out, path)
        except MLETError as exc:
            error = str(exc)
    if distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise MLETError(error)
    return out


def _gather_folded(weight, proj, name, rank):
    """Assemble a sharded table on rank 0 (CPU), folded when ``proj`` is given.

    Every rank walks the same global shard list. A shard's owner folds it
    (or takes it as is, for a plain table) and streams it to rank 0, which
    adds it into place. Adding into zeros is exact, so row and table shards
    arrive bit for bit; column shards of an MLET table add up their partial
    products. A folded table has ``fold_weight``'s dtype, the wider of table
    and projection (float32 for an fp16 table), so every rank knows it.
    """
    rows, cols = weight.size()
    width = cols if proj is None else proj.shape[0]
    dtype = weight.dtype if proj is None else torch.promote_types(weight.dtype, proj.dtype)
    local = {tuple(s.metadata.shard_offsets): s.tensor for s in weight.local_shards()}
    device = comm_device()
    table = torch.zeros(rows, width, dtype=dtype) if rank == 0 else None
    for meta in weight.metadata().shards_metadata:
        owner = meta.placement.rank()
        (r0, c0), (nr, nc) = meta.shard_offsets, meta.shard_sizes
        block, error = None, None
        if rank == owner:
            block = local[(r0, c0)].detach()
            if proj is not None:
                try:
                    block = fold_weight(block, proj[:, c0 : c0 + nc], f"{name} (shard at row {r0})")
                except MLETError as exc:
                    error = str(exc)
        # One small collective per shard: a diverged shard stops every rank
        # with its owner's message instead of leaving rank 0 waiting.
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        if any(errors):
            raise MLETError(next(e for e in errors if e))
        columns = slice(c0, c0 + nc) if proj is None else slice(None)
        place = table[r0 : r0 + nr, columns] if rank == 0 else None
        stream_to_rank0(block, owner, place, add=True, device=device)
    return table
