"""Sharding an MLET collection so that each rank projects before the all-to-all.

Under TorchRec's default sharders the k-wide tables of an
``MLETEmbeddingBagCollection`` are sharded like any ``EmbeddingBagCollection``
and the projections run data-parallel after it, so the pooled rows that cross
the network in the output distribution are k wide: k/d times what stock
TorchRec sends. Pooling and projection are both linear, so every shard can
project its own partial result before it is sent. ``MLETEmbeddingBagCollectionSharder``
(pass ``sharders()`` to the planner and to ``DistributedModelParallel``) does
that, and moves each projection to the ranks that hold its table's shards:

- table-wise: the owner projects its tables' pooled rows; the projection lives there only;
- row-wise, table-row-wise: each rank holding rows projects its partial sums and
  the reduce-scatter adds d-wide vectors; each of those ranks keeps the whole
  projection, and their gradients are summed among exactly them (the sharding's
  process group; for table-row-wise TorchRec's intra-node group);
- column-wise, table-column-wise: the owner of columns ``c`` keeps ``B[:, c]``
  and sends the d-wide partial ``pool(A[:, c]) @ B[:, c].T``; the receiver adds
  the partials of a feature's shards instead of concatenating them. Exact, but a
  table in n column shards sends n * d per sample (stock at width d: d);
- data-parallel: nothing is sent; the projection stays data-parallel (DDP), as before.

Grid sharding is not offered, so the planner never picks it. Row-wise, each
rank projects the whole batch's partial sums: W times the projection
arithmetic of the data-parallel projection, for 1/(k/d) of the bytes. The
planner's estimates still price an MLET table's output exchange at its k-wide
shard width (TorchRec's estimators know no projection); its memory is right.

The tables themselves are TorchRec's: the collection's ``EmbeddingBagCollection``
is sharded by TorchRec's own sharder (lookups, input dists, fused optimizer,
state dict, planner storage all as for any collection, at the real k-wide
size). Only its output side is rebuilt, by TorchRec, from the same shardings
described at the projected widths (``_narrowed``), with each output dist
projecting the lookup's pooled rows on the way in (``_ProjectThenSend``).

Gradients come out as DDP's averaged ones did: TorchRec's output dists divide
the gradient they send back by the world size (its gradient division, on by
default), which is DDP's average; where it is switched off the projections
divide by the world size themselves. The dense optimizer trains them, as before.

State dict: ``ebc.embedding_bags.<table>.weight`` as TorchRec shards it;
``proj.<table>.weight`` where a rank holds all k columns of its shards (the
same values on every rank holding it), and ``proj.<table>.columns.<first
column>`` for each column shard it holds, so no two ranks hold different
values under one key: ``torch.distributed.checkpoint`` saves each once, for
the parameters and the dense optimizer's state alike, and ``fold_torchrec``
folds every shard with the columns it was trained with.
"""

import dataclasses
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
from torch.nn.parallel import DistributedDataParallel
from torchrec import EmbeddingBagCollection, KeyedTensor
from torchrec.distributed.comm import intra_and_cross_node_pg
from torchrec.distributed.comm_ops import get_gradient_division
from torchrec.distributed.embedding_types import BaseEmbeddingSharder, KJTList, ShardedEmbeddingModule
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionContext, EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingEnv2D, ShardingType
from torchrec.distributed.utils import append_prefix
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from ..core.init import init_projection_
from ..errors import MLETError
from .collection import MLETEmbeddingBagCollection

SHARDING_TYPES = tuple(
    t.value for t in (
        ShardingType.DATA_PARALLEL, ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE,
        ShardingType.TABLE_COLUMN_WISE, ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE,
    )
)


def sharders():
    """TorchRec's default sharders plus the MLET one, for the planner and ``DistributedModelParallel``.

    The MLET sharder shards the tables with the defaults' own
    ``EmbeddingBagCollectionSharder``, so both see the same fused parameters.
    """
    defaults = get_default_sharders()
    ebc_sharder = next(s for s in defaults if s.module_type is EmbeddingBagCollection)
    return defaults + [MLETEmbeddingBagCollectionSharder(ebc_sharder)]


class MLETEmbeddingBagCollectionSharder(BaseEmbeddingSharder[MLETEmbeddingBagCollection]):
    """TorchRec's sharder for ``MLETEmbeddingBagCollection``: d-wide output distributions.

    ``ebc_sharder`` shards the k-wide tables (TorchRec's default one if None);
    the planner sees those tables, at their real size. Grid sharding is not
    offered (its shards would need a projection per column block per node).
    """

    def __init__(self, ebc_sharder=None, qcomm_codecs_registry=None):
        self._ebc_sharder = ebc_sharder or EmbeddingBagCollectionSharder(qcomm_codecs_registry=qcomm_codecs_registry)
        super().__init__(qcomm_codecs_registry=self._ebc_sharder.qcomm_codecs_registry)

    def shard(self, module, params, env, device=None, module_fqn=None):
        return ShardedMLETEmbeddingBagCollection(
            module, params, self._ebc_sharder, env, device or torch.device("cuda"), module_fqn
        )

    @property
    def fused_params(self):
        return self._ebc_sharder.fused_params

    def shardable_parameters(self, module):
        return self._ebc_sharder.shardable_parameters(module.ebc)

    def sharding_types(self, compute_device_type):
        return [t for t in self._ebc_sharder.sharding_types(compute_device_type) if t in SHARDING_TYPES]

    def compute_kernels(self, sharding_type, compute_device_type):
        return self._ebc_sharder.compute_kernels(sharding_type, compute_device_type)

    @property
    def module_type(self):
        return MLETEmbeddingBagCollection

    @property
    def sharded_module_type(self):
        return ShardedMLETEmbeddingBagCollection


class _ProjectionShards(nn.Module):
    """One table's projection as this rank holds it: whole, or the columns of its column shards."""

    def __init__(self, full, blocks):
        super().__init__()
        k = full.shape[1]
        if blocks == [(0, k)]:
            self.weight = nn.Parameter(full.clone())
        else:
            self.columns = nn.ParameterDict(
                {str(c0): nn.Parameter(full[:, c0:c0 + width].clone()) for c0, width in blocks}
            )

    def block(self, c0, width):
        """The projection columns ``c0:c0 + width``, the ones a lookup shard was trained with."""
        if "weight" in self._parameters:
            return self.weight if width == self.weight.shape[1] else self.weight[:, c0:c0 + width]
        return self.columns[str(c0)]


class _SumGradients(torch.autograd.Function):
    """Identity; in backward, sums its weights' gradients over ``group`` in one all-reduce, then scales them."""

    @staticmethod
    def forward(ctx, group, scale, *weights):
        ctx.group, ctx.scale = group, scale
        ctx.shapes = [w.shape for w in weights]
        ctx.like = weights[0].new_zeros(())
        return tuple(w.view_as(w) for w in weights)

    @staticmethod
    def backward(ctx, *grads):
        flat = torch.cat([
            (g if g is not None else ctx.like.expand(shape)).reshape(-1)
            for g, shape in zip(grads, ctx.shapes)
        ])
        if ctx.group is not None:
            dist.all_reduce(flat, group=ctx.group)
        if ctx.scale != 1:
            flat.mul_(ctx.scale)
        parts = flat.split([shape.numel() for shape in ctx.shapes])
        return (None, None, *(p.view(shape) for p, shape in zip(parts, ctx.shapes)))


class _ProjectThenSend(nn.Module):
    """A TorchRec output dist that first projects the lookup's k-wide pooled slices to d.

    ``segments`` is the lookup's output, slice by slice: (width, (table, first
    column, width) of the shard it pooled, or None for a plain table). The
    projections run in float32 (half tables included); their results take the
    lookup's output dtype, the format the dist was built to send.
    """

    def __init__(self, output_dist, segments, proj, group, scale):
        super().__init__()
        self.output_dist = output_dist
        self._widths = [width for width, _ in segments]
        self._blocks = [block for _, block in segments]
        self._proj = proj
        self._group, self._scale = group, scale

    def forward(self, local_embs, sharding_ctx=None):
        return self.output_dist(self._project(local_embs), sharding_ctx)

    def _project(self, local_embs):
        if not any(self._blocks):
            return local_embs
        used = list(dict.fromkeys(b for b in self._blocks if b))
        weights = [self._proj[table].block(c0, width) for table, c0, width in used]
        if (self._group is not None or self._scale != 1) and torch.is_grad_enabled():
            weights = _SumGradients.apply(self._group, self._scale, *weights)
        weight_of = dict(zip(used, weights))
        out = []
        for piece, block in zip(local_embs.split(self._widths, dim=1), self._blocks):
            if block is None:
                out.append(piece)
            else:
                weight = weight_of[block]
                out.append(nn.functional.linear(piece.to(weight.dtype), weight).to(piece.dtype))
        return torch.cat(out, dim=1)


def _narrowed(info, d):
    """A table's sharding info with every shard d wide: same rows, features and placement.

    TorchRec builds output dists from it. A column shard becomes d-wide block
    ``i`` (its rank among the table's column offsets), so the dist delivers a
    feature's blocks side by side, in column order, for the receiver to add.
    """
    sharding = info.param_sharding
    spec, width = sharding.sharding_spec, d
    if spec is not None:
        starts = sorted({s.shard_offsets[1] for s in spec.shards})
        spec = EnumerableShardingSpec([
            dataclasses.replace(
                s, shard_offsets=[s.shard_offsets[0], starts.index(s.shard_offsets[1]) * d],
                shard_sizes=[s.shard_sizes[0], d],
            )
            for s in spec.shards
        ])
        width = len(starts) * d
    return dataclasses.replace(
        info,
        embedding_config=dataclasses.replace(info.embedding_config, embedding_dim=width),
        param_sharding=dataclasses.replace(sharding, sharding_spec=spec),
        param=torch.empty(info.param.shape[0], width, dtype=info.param.dtype, device="meta"),
    )


def _segments(lookup, hidden_dims):
    """What a lookup's output holds, slice by slice (one per feature): see ``_ProjectThenSend``."""
    while isinstance(lookup, DistributedDataParallel):
        lookup = lookup.module
    if not hasattr(lookup, "grouped_configs"):
        raise MLETError(f"cannot project the output of a {type(lookup).__name__} lookup before it is sent")
    segments = []
    for config in lookup.grouped_configs:
        for table in config.embedding_tables:
            block = None
            if hidden_dims[table.name]:
                c0 = table.local_metadata.shard_offsets[1] if table.local_metadata is not None else 0
                block = (table.name, c0, table.local_cols)
            segments += [(table.local_cols, block)] * table.num_features()
    return segments


def _gradient_group(sharding_type, env, device):
    """The ranks that hold a row-sliced table's whole projection: their gradients add up."""
    if sharding_type == ShardingType.ROW_WISE.value:
        return env.process_group
    if sharding_type == ShardingType.TABLE_ROW_WISE.value:
        return intra_and_cross_node_pg(device, backend=dist.get_backend(env.process_group))[0]
    return None


def _send_projected(ebc, proj, hidden_dims, out_dims, env):
    """Rebuild a ``ShardedEmbeddingBagCollection``'s output side to send projected, d-wide rows.

    TorchRec builds the new output dists (``_update_output_dist``, its own
    rebuild after resharding) from the same shardings described at the
    projected widths; lookups, input dists and state stay as they are.
    """
    narrow = []
    for sharding_type, wide in zip(ebc._sharding_types, ebc._embedding_shardings):
        infos = [
            _narrowed(info, out_dims[info.embedding_config.name]) if hidden_dims[info.embedding_config.name] else info
            for info in ebc.sharding_type_to_sharding_infos[sharding_type]
        ]
        sharding = ebc.create_embedding_bag_sharding(
            infos, env, ebc._device, permute_embeddings=True, qcomm_codecs_registry=ebc.qcomm_codecs_registry
        )
        if (sharding.uncombined_embedding_names() != wide.uncombined_embedding_names()
                or sharding.feature_names() != wide.feature_names()):
            raise MLETError(f"{sharding_type}: TorchRec groups the projected tables differently from the "
                            "k-wide ones, so their outputs cannot be projected before they are sent")
        narrow.append(sharding)
    wide, ebc._embedding_shardings = ebc._embedding_shardings, narrow
    try:
        ebc._update_output_dist()
    finally:
        ebc._embedding_shardings = wide
    # _update_output_dist leaves the widths that mean pooling divides by as they were.
    ebc._dim_per_key = torch.tensor(ebc._embedding_dims, device=ebc._device)
    scale = 1.0 if get_gradient_division() else 1.0 / env.world_size
    ebc._output_dists = [
        _ProjectThenSend(
            output_dist, _segments(lookup, hidden_dims), proj,
            _gradient_group(sharding_type, env, ebc._device),
            1.0 if sharding_type == ShardingType.DATA_PARALLEL.value else scale,
        )
        for output_dist, lookup, sharding_type in zip(ebc._output_dists, ebc._lookups, ebc._sharding_types)
    ]


def _local_projections(module, plan, env, device):
    """This rank's projection parameters, every one starting as rank 0's (as DDP's would).

    Of each projection a rank keeps the columns of the table shards it holds:
    all k where it holds whole rows (table-, row-, table-row-wise, data-parallel
    shards), ``B[:, c]`` for each column shard ``c``. Meta projections are
    initialised here, after the tables, in the order DMP would.
    """
    full = {}
    for table, projection in module.proj.items():
        weight = projection.weight
        if weight.device.type == "meta":
            weight = init_projection_(torch.empty(weight.shape, device=device), projection.init)
        full[table] = weight.detach().to(device=device, dtype=torch.float32, copy=True)
    if full and env.process_group is not None:  # (None: TorchRec's planning dry runs)
        flat = torch.cat([w.reshape(-1) for w in full.values()])
        dist.broadcast(flat, src=dist.get_global_rank(env.process_group, 0), group=env.process_group)
        parts = flat.split([w.numel() for w in full.values()])
        full = {table: part.view_as(w) for (table, w), part in zip(full.items(), parts)}
    shards = nn.ModuleDict()
    for table, weight in full.items():
        spec = plan[table].sharding_spec
        if spec is None:  # data-parallel: every rank holds the whole table
            blocks = [(0, weight.shape[1])]
        else:
            mine = [s for s in spec.shards if s.placement.rank() == env.rank]
            blocks = sorted({(s.shard_offsets[1], s.shard_sizes[1]) for s in mine})
        if blocks:
            shards[table] = _ProjectionShards(weight, blocks)
    return shards


def _add_column_blocks(kt, blocks):
    """Add each feature's ``n`` d-wide column-shard partials (``blocks``: n per key) into one."""
    parts = kt.values().split(kt.length_per_key(), dim=1)
    out = [p if n == 1 else p.unflatten(1, (n, -1)).sum(1) for p, n in zip(parts, blocks)]
    return KeyedTensor(keys=kt.keys(), length_per_key=[p.shape[1] for p in out], values=torch.cat(out, dim=1))


class ShardedMLETEmbeddingBagCollection(
    ShardedEmbeddingModule[KJTList, list, KeyedTensor, EmbeddingBagCollectionContext]
):
    """An ``MLETEmbeddingBagCollection`` sharded so that its output distribution carries d-wide rows.

    ``ebc`` is TorchRec's ``ShardedEmbeddingBagCollection`` of the k-wide
    tables (built by the EBC sharder given), whose output dists project;
    ``proj[table]`` is this rank's part of each projection. Like the
    unsharded collection it presents the d-wide configs and a d-wide output.
    """

    def __init__(self, module, table_name_to_parameter_sharding, ebc_sharder, env, device, module_fqn=None):
        super().__init__(qcomm_codecs_registry=ebc_sharder.qcomm_codecs_registry)
        if isinstance(env, ShardingEnv2D):
            raise MLETError("the MLET sharder does not support 2D parallelism (DMPCollection); "
                            "use DistributedModelParallel")
        self._configs = module.embedding_bag_configs()
        self._is_weighted = module.is_weighted()
        self.table_dtype = module.table_dtype
        self.hidden_dims = module.hidden_dims
        plan = {c.name: table_name_to_parameter_sharding[c.name] for c in self._configs}
        self._data_parallel = {t for t, p in plan.items() if p.sharding_type == ShardingType.DATA_PARALLEL.value}
        self.ebc = ebc_sharder.shard(module.ebc, plan, env=env, device=device, module_fqn=module_fqn)
        self.proj = _local_projections(module, plan, env, device)
        out_dims = {c.name: c.embedding_dim for c in self._configs}
        _send_projected(self.ebc, self.proj, self.hidden_dims, out_dims, env)
        # Shared, as TorchRec's feature-processed collection shares its collection's (prefetch, train()).
        self._lookups = self.ebc._lookups
        # A feature of a column-wise MLET table arrives as its shards' d-wide partials, side by side.
        mlet_width = {
            name: c.embedding_dim
            for c, names in zip(self._configs, get_embedding_names_by_table(self._configs))
            if self.hidden_dims[c.name] for name in names
        }
        blocks = [dim // mlet_width.get(name, dim)
                  for name, dim in zip(self.ebc._embedding_names, self.ebc._embedding_dims)]
        self._column_blocks = blocks if any(n > 1 for n in blocks) else None

    @property
    def hidden_dim(self):
        return max(self.hidden_dims.values())

    def embedding_bag_configs(self):
        return self._configs

    def is_weighted(self):
        return self._is_weighted

    def create_context(self):
        return self.ebc.create_context()

    def input_dist(self, ctx, features):
        return self.ebc.input_dist(ctx, features)

    def compute(self, ctx, dist_input):
        return self.ebc.compute(ctx, dist_input)

    def output_dist(self, ctx, output):
        return self._added(self.ebc.output_dist(ctx, output))

    def compute_and_output_dist(self, ctx, input):
        return self._added(self.ebc.compute_and_output_dist(ctx, input))

    def _added(self, awaitable):
        if self._column_blocks is not None:
            awaitable.callbacks.append(partial(_add_column_blocks, blocks=self._column_blocks))
        return awaitable

    def sharded_parameter_names(self, prefix=""):
        """The tables' and the model-parallel projections' parameters, which DMP's DDP must leave alone."""
        yield from self.ebc.sharded_parameter_names(append_prefix(prefix, "ebc"))
        for table, shards in self.proj.items():
            if table not in self._data_parallel:
                for name, _ in shards.named_parameters(prefix=append_prefix(prefix, f"proj.{table}")):
                    yield name

    @property
    def unsharded_module_type(self):
        return MLETEmbeddingBagCollection
