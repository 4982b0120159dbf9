"""``fold_torchrec_state_dict``: a trained TorchRec MLET model, sharded or not, as a stock state dict.

The result is the state dict of the same model built with plain d-wide
``EmbeddingBagCollection``s. Kept apart from the collection because this is
the distributed half: walking a ``DistributedModelParallel`` model's shards,
folding each where it lives and streaming the folded rows to rank 0
(``core/gather.py``, the same stream DLRM's distributed save uses).
"""

import warnings
from collections import OrderedDict
from typing import Dict, Mapping, NamedTuple, Optional, cast

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec.distributed import DistributedModelParallel

from ..core.folding import fold_weight
from ..core.gather import comm_device, stream_to_rank0
from ..errors import MLETError
from ..checkpoint_io import atomic_save
from ..files import StrPath
from .collection import MLETEmbeddingBagCollection
from .sharding import ShardedMLETEmbeddingBagCollection


def _unwrap(model):
    """The module whose ``state_dict`` keys and submodule names agree."""
    return model.module if isinstance(model, DistributedModelParallel) else model


class _ProjectionKey(NamedTuple):
    """Where a table's projection is in the state dict (``prefix``: ``...proj.<table>.``), its d and dtype."""

    prefix: str
    width: int
    dtype: torch.dtype

    def columns(self, state: Mapping[str, torch.Tensor], c0: int, ncols: int) -> torch.Tensor:
        """Its columns ``c0:c0 + ncols``, as the rank holding that table shard has them.

        A rank holding all k columns has ``weight``; one holding a column
        shard of a sharded MLET collection has ``columns.<c0>``.
        """
        whole = state.get(self.prefix + "weight")
        return whole[:, c0 : c0 + ncols] if whole is not None else state[f"{self.prefix}columns.{c0}"]


def _table_keys(root):
    """Map each table's state-dict key inside an MLET collection to (folded key, ``_ProjectionKey``).

    The projection is None for a plain table, which is renamed only. Also
    returns the prefixes of all projection keys: those are folded into their
    tables, not copied.
    """
    keys, projections = {}, []
    for name, module in root.named_modules():
        if not isinstance(module, (MLETEmbeddingBagCollection, ShardedMLETEmbeddingBagCollection)):
            continue
        prefix = f"{name}." if name else ""
        projections.append(f"{prefix}proj.")
        for config in module.embedding_bag_configs():
            table = config.name
            proj = None
            if module.hidden_dims[table]:
                # A sharded collection's projections are float32 (and absent on some ranks).
                sharded = isinstance(module, ShardedMLETEmbeddingBagCollection)
                dtype = torch.float32 if sharded else module.proj[table].weight.dtype
                proj = _ProjectionKey(f"{prefix}proj.{table}.", config.embedding_dim, dtype)
            keys[f"{prefix}ebc.embedding_bags.{table}.weight"] = (f"{prefix}embedding_bags.{table}.weight", proj)
    return keys, tuple(projections)


def fold_torchrec_state_dict(model: torch.nn.Module,
                             path: Optional[StrPath] = None) -> Optional[Dict[str, torch.Tensor]]:
    """Fold every MLET collection in ``model``; return the plain model's state dict.

    ``model`` is an MLET model, plain or wrapped in ``DistributedModelParallel``
    (table-wise, row-wise, column-wise, data-parallel and mixed plans; default
    sharders or ``sharders()``, which project before sending). The
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
    keys, projections = _table_keys(root)
    if not keys:
        raise MLETError("the model has no MLETEmbeddingBagCollection; there is nothing to fold")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    out: Optional[Dict[str, torch.Tensor]] = OrderedDict() if rank == 0 else None
    error = None  # a failure on rank 0 alone; the others learn it at the end
    state = root.state_dict()
    for key, value in state.items():
        if key.startswith(projections):
            continue  # folded into its table
        new_key, proj = keys.get(key, (key, None))
        if isinstance(value, DTensor):
            raise MLETError(
                f"{key} is a DTensor (TorchRec's 2D-parallel or output_dtensor mode); "
                "fold_torchrec_state_dict supports DistributedModelParallel's ShardedTensor tables only"
            )
        gathered = isinstance(value, ShardedTensor)
        if gathered:
            with warnings.catch_warnings():
                # TorchRec 1.8 still hands out ShardedTensors; its deprecation
                # notice is not something the user can act on.
                warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
                value = _gather_folded(value, state, proj, new_key, rank)
        if rank != 0 or error:
            continue
        try:
            if proj is not None and not gathered:
                value = fold_weight(value, proj.columns(state, 0, value.shape[1]), new_key)
            elif proj is not None and not bool(torch.isfinite(value).all()):
                raise MLETError(f"{new_key}: the folded table is not finite (shards overflowed)")
            cast(Dict[str, torch.Tensor], out)[new_key] = value.detach().cpu()  # rank 0 here: it has out
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


def _gather_folded(weight, state, proj, name, rank):
    """Assemble a sharded table on rank 0 (CPU), folded when ``proj`` is given.

    Every rank walks the same global shard list. A shard's owner folds it
    with the projection columns it holds in ``state`` (or takes it as is, for
    a plain table) and streams it to rank 0, which
    adds it into place. Adding into zeros is exact, so row and table shards
    arrive bit for bit; column shards of an MLET table add up their partial
    products. A folded table has ``fold_weight``'s dtype, the wider of table
    and projection (float32 for an fp16 table), so every rank knows it.
    """
    rows, cols = weight.size()
    width = cols if proj is None else proj.width
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
                    block = fold_weight(block, proj.columns(state, c0, nc), f"{name} (shard at row {r0})")
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
