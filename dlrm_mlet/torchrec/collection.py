"""MLET for TorchRec: k-wide tables in a standard EmbeddingBagCollection.

The ``n x k`` tables live in a stock ``torchrec.EmbeddingBagCollection``, so
``DistributedModelParallel`` shards them with its default sharders and its
planner counts their real (k-wide) memory. Each table's ``k -> d`` projection
is a small dense layer outside that collection, so DMP trains it data-parallel
with the MLPs. ``MLETEmbeddingBagCollection`` presents the folded (d-wide)
configs and a d-wide ``KeyedTensor``, which is all ``torchrec.models.dlrm``
asks of an embedding collection, so every DLRM variant takes it unchanged.

``fold_torchrec`` turns a trained model, sharded or not, into the state dict
of the same model built with a plain d-wide ``EmbeddingBagCollection``.
"""

import dataclasses
import numbers
import warnings
from collections import OrderedDict

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedTensor
from torchrec.distributed import DistributedModelParallel
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from ..files import atomic_save
from ..errors import MLETError
from ..core.folding import FOLD_BLOCK_BYTES, fold_weight
from ..core.init import init_projection_, parse_proj_init, uniform_table_

FOLDABLE_POOLINGS = (PoolingType.SUM, PoolingType.MEAN)


class _Projection(nn.Module):
    """One table's ``k -> d`` map: ``nn.Linear(k, d, bias=False)`` with MLET's init.

    Its own ``reset_parameters`` matters when it is built on the meta device:
    DMP then materialises it by calling that method, and ``nn.Linear``'s would
    give Kaiming init instead of N(0, 0.25^2).
    """

    def __init__(self, in_features, out_features, init, device=None):
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight.device.type != "meta":
            init_projection_(self.weight, self.init)

    def forward(self, x):
        return nn.functional.linear(x, self.weight)

    def extra_repr(self):
        out_features, in_features = self.weight.shape
        return f"{in_features} -> {out_features}, init={self.init!r}"


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise MLETError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class MLETEmbeddingBagCollection(nn.Module):
    """Stands in for ``EmbeddingBagCollection`` in a TorchRec model, trained as MLET.

    ``ebc`` is a standard collection of the same tables at width ``hidden_dim``
    (k); ``proj[table]`` maps each pooled k-vector to the table's
    ``embedding_dim`` (d). ``embedding_bag_configs()`` and the output are those
    of the d-wide collection it folds into, feature for feature, so DLRM sees
    no difference. Build the tables on ``device="meta"`` for DMP (TorchRec then
    initialises the shards with the same U(-sqrt(1/n), sqrt(1/n)) from torch's
    RNG); on a real device they get DLRM's init from numpy's RNG, like
    ``MLETEmbeddingBag``.
    """

    def __init__(
        self,
        tables,
        hidden_dim,
        proj_init="normal",
        is_weighted=False,
        device=None,
        dense_device=None,
        allow_narrow=False,
    ):
        super().__init__()
        k = _positive_int(hidden_dim, "hidden_dim")
        proj_init = parse_proj_init(proj_init)
        tables = list(tables)
        if not tables:
            raise MLETError("MLETEmbeddingBagCollection needs at least one table")
        for config in tables:
            if not isinstance(config, EmbeddingBagConfig):
                raise MLETError(f"tables must be EmbeddingBagConfig, got {type(config).__name__}")
            if config.pooling not in FOLDABLE_POOLINGS:
                raise MLETError(
                    f"table {config.name!r}: pooling {config.pooling.name} cannot be folded "
                    "exactly; use SUM or MEAN"
                )
            if k < config.embedding_dim and not allow_narrow:
                raise MLETError(
                    f"table {config.name!r}: hidden_dim {k} is below its embedding_dim "
                    f"{config.embedding_dim} (a bottleneck, not MLET); pass allow_narrow=True "
                    "to allow it"
                )
            if not config.feature_names:
                config.feature_names = [config.name]  # as EmbeddingBagCollection does
        device = torch.device(device) if device is not None else None
        dense_device = torch.device(dense_device) if dense_device is not None else None
        self._configs = tables
        self._is_weighted = is_weighted
        # init_fn is dropped so the wide config computes its own default, with
        # the same bounds (they depend on n only).
        wide = [dataclasses.replace(c, embedding_dim=k, init_fn=None) for c in tables]
        self.ebc = EmbeddingBagCollection(tables=wide, is_weighted=is_weighted, device=device)
        for bag in self.ebc.embedding_bags.values():
            if bag.weight.device.type != "meta":
                uniform_table_(bag.weight)
        self.proj = nn.ModuleDict(
            {c.name: _Projection(k, c.embedding_dim, proj_init, dense_device) for c in tables}
        )
        names = get_embedding_names_by_table(tables)
        self._outputs = [(n, c.name) for c, table_names in zip(tables, names) for n in table_names]

    @property
    def hidden_dim(self):
        return next(iter(self.proj.values())).weight.shape[1]

    def embedding_bag_configs(self):
        """The d-wide configs: what DLRM reads, and what the folded model is built from."""
        return self._configs

    def is_weighted(self):
        return self._is_weighted

    def forward(self, features):
        # Under DMP self.ebc is sharded and returns a lazy KeyedTensor; to_dict
        # waits for it, as DLRM's SparseArch does.
        pooled = self.ebc(features).to_dict()
        out = [self.proj[table](pooled[name]) for name, table in self._outputs]
        return KeyedTensor(
            keys=[name for name, _ in self._outputs],
            length_per_key=[v.shape[1] for v in out],
            values=torch.cat(out, dim=1),
        )

    def fold(self, name=None):
        """The equivalent plain d-wide ``EmbeddingBagCollection`` (unsharded models only).

        ``name`` (where it sits in a model, for ``fold_model``) prefixes the table
        names in errors.
        """
        if type(self.ebc) is not EmbeddingBagCollection:
            raise MLETError(
                "fold() needs an unsharded model; use fold_torchrec(model) for a "
                "DistributedModelParallel one"
            )
        first = next(iter(self.ebc.embedding_bags.values())).weight
        where = f"{name}." if name else ""
        folded = {
            table: fold_weight(bag.weight, self.proj[table].weight, where + table)
            for table, bag in self.ebc.embedding_bags.items()
        }
        # Built on meta and then filled, so folding draws no random numbers.
        plain = EmbeddingBagCollection(
            tables=list(self._configs), is_weighted=self._is_weighted, device="meta"
        )
        plain = plain.to_empty(device=first.device)
        plain._device = first.device
        with torch.no_grad():
            for name, weight in folded.items():
                plain.embedding_bags[name].weight.copy_(weight)
        return plain


def mlet_dlrm(
    tables,
    hidden_dim,
    dense_in_features,
    dense_arch_layer_sizes,
    over_arch_layer_sizes,
    proj_init="normal",
    dense_device=None,
    table_device=None,
):
    """A stock ``torchrec.models.dlrm.DLRM`` whose tables train as MLET.

    ``tables`` are the d-wide configs of the model you will deploy; pass
    ``table_device=torch.device("meta")`` when DMP will shard the tables.
    """
    ebc = MLETEmbeddingBagCollection(
        tables, hidden_dim, proj_init=proj_init, device=table_device, dense_device=dense_device
    )
    return DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in_features,
        dense_arch_layer_sizes=dense_arch_layer_sizes,
        over_arch_layer_sizes=over_arch_layer_sizes,
        dense_device=dense_device,
    )


def sparse_parameters(model):
    """Parameters for TorchRec's fused (in-backward) embedding optimizer.

    Those of every ``EmbeddingBagCollection`` in ``model``: the k-wide tables
    of an MLET model, all tables of a plain one. MLET projections are left out
    on purpose: they are dense, train data-parallel under DDP and belong with
    the dense optimizer (and its learning-rate schedule).
    """
    for module in model.modules():
        if type(module) is EmbeddingBagCollection:
            yield from module.parameters()


def _unwrap(model):
    """The module whose ``state_dict`` keys and submodule names agree."""
    return model.module if isinstance(model, DistributedModelParallel) else model


def _mlet_keys(root):
    """Map each MLET state-dict key to (folded key or None, projection weight)."""
    keys = {}
    for name, module in root.named_modules():
        if not isinstance(module, MLETEmbeddingBagCollection):
            continue
        prefix = f"{name}." if name else ""
        for table, proj in module.proj.items():
            keys[f"{prefix}ebc.embedding_bags.{table}.weight"] = (
                f"{prefix}embedding_bags.{table}.weight",
                proj.weight,
            )
            keys[f"{prefix}proj.{table}.weight"] = (None, proj.weight)
    return keys


def fold_torchrec(model, path=None):
    """Fold every MLET collection in ``model``; return the plain model's state dict.

    ``model`` is an MLET model, plain or wrapped in ``DistributedModelParallel``
    (table-wise, row-wise, column-wise, data-parallel and mixed plans). The
    result has the keys and shapes of the same model built with plain d-wide
    ``EmbeddingBagCollection``s, on the CPU, and loads into it with
    ``strict=True``. Distributed, every rank must call this: each rank folds
    its own shards (a column shard into a partial product, since ``A @ B.T``
    is the sum of its column blocks' products) and sends the folded rows to
    rank 0 in chunks, so rank 0 holds the folded tables plus one folded local
    shard and one chunk. Rank 0 gets the state dict and writes it to ``path``
    atomically; other ranks get None. Any failure raises on every rank.
    """
    root = _unwrap(model)
    mlet = _mlet_keys(root)
    if not mlet:
        raise MLETError("the model has no MLETEmbeddingBagCollection; there is nothing to fold")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    out = OrderedDict() if rank == 0 else None
    error = None  # a failure on rank 0 alone; the others learn it at the end
    for key, value in root.state_dict().items():
        new_key, proj = mlet.get(key, (key, None))
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
            if key in mlet and not gathered:
                value = fold_weight(value, proj, new_key)
            elif key in mlet and not bool(torch.isfinite(value).all()):
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
    (or takes it as is, for a non-MLET table) and sends it in row chunks;
    rank 0 adds each chunk into place. Adding into zeros is exact, so row and
    table shards arrive bit for bit; column shards of an MLET table add up
    their partial products.
    """
    rows, cols = weight.size()
    width = cols if proj is None else proj.shape[0]
    local = {tuple(s.metadata.shard_offsets): s.tensor for s in weight.local_shards()}
    # NCCL moves CUDA tensors only; gloo (and "cpu:gloo,cuda:nccl") takes CPU ones.
    nccl = dist.get_backend() == "nccl"
    comm = torch.device("cuda", torch.cuda.current_device()) if nccl else None
    table = torch.zeros(rows, width, dtype=weight.dtype) if rank == 0 else None
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
        if proj is None:
            target, block_width = slice(c0, c0 + nc), nc
        else:
            target, block_width = slice(None), width
        if owner == 0:
            if rank == 0:
                table[r0 : r0 + nr, target] += block.cpu()
            continue
        step = max(1, FOLD_BLOCK_BYTES // (4 * block_width))
        for start in range(0, nr, step):
            stop = min(nr, start + step)
            if rank == owner:
                chunk = block[start:stop].contiguous()
                dist.send(chunk.to(comm) if comm else chunk, dst=0)
            elif rank == 0:
                chunk = torch.empty(stop - start, block_width, dtype=weight.dtype, device=comm)
                dist.recv(chunk, src=owner)
                table[r0 + start : r0 + stop, target] += chunk.cpu()
    return table
