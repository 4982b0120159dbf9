"""The output side of a sharded MLET collection: each rank projects its shards' pooled rows, then sends.

``sharding.py``'s sharded collection uses these: ``send_projected`` rebuilds
TorchRec's output distributions from the same shardings at the projected
widths (``narrowed``) with each one projecting the lookup's pooled rows on
the way in (``ProjectThenSend``); ``local_projections`` places each
table's projection (or its column blocks) with the shards that use it, and
``SumGradients`` sums a row-wise projection's gradients among the ranks
holding it; ``add_column_blocks`` adds a column-sharded table's partial
products where stock TorchRec would concatenate its columns.
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec
from torch.nn.parallel import DistributedDataParallel
from torchrec import KeyedTensor
from torchrec.distributed.comm import intra_and_cross_node_pg
from torchrec.distributed.comm_ops import get_gradient_division
from torchrec.distributed.types import ShardingType

from ..core.init import init_projection_
from ..errors import MLETError

if TYPE_CHECKING:
    from torchrec.distributed.embedding_sharding import (
        BaseEmbeddingDist, EmbeddingShardingContext, EmbeddingShardingInfo,
    )
    from torchrec.distributed.embedding_types import GroupedEmbeddingConfig
    from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
    from torchrec.distributed.types import Awaitable, ParameterSharding, ShardingEnv

    from .collection import MLETEmbeddingBagCollection

# One slice of a lookup's pooled output: (its width, (table, first column, width) of the shard it pooled,
# or None for a plain table's slice).
Segment = Tuple[int, Optional[Tuple[str, int, int]]]


class ProjectionShards(nn.Module):
    """One table's projection as this rank holds it: whole, or the columns of its column shards."""

    def __init__(self, full: torch.Tensor, blocks: List[Tuple[int, int]]) -> None:
        super().__init__()
        k = full.shape[1]
        if blocks == [(0, k)]:
            self.weight = nn.Parameter(full.clone())
        else:
            self.columns = nn.ParameterDict(
                {str(c0): nn.Parameter(full[:, c0:c0 + width].clone()) for c0, width in blocks}
            )

    def block(self, c0: int, width: int) -> torch.Tensor:
        """The projection columns ``c0:c0 + width``, the ones a lookup shard was trained with."""
        if "weight" in self._parameters:
            return self.weight if width == self.weight.shape[1] else self.weight[:, c0:c0 + width]
        return self.columns[str(c0)]


class SumGradients(torch.autograd.Function):
    """Identity; in backward, sums its weights' gradients over ``group`` in one all-reduce, then scales them."""

    @staticmethod
    def forward(ctx: Any, group: Optional[dist.ProcessGroup], scale: float,
                *weights: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        ctx.group, ctx.scale = group, scale
        ctx.shapes = [w.shape for w in weights]
        ctx.like = weights[0].new_zeros(())
        return tuple(w.view_as(w) for w in weights)

    @staticmethod
    def backward(ctx: Any, *grads: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
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


class ProjectThenSend(nn.Module):
    """A TorchRec output dist that first projects the lookup's k-wide pooled slices to d.

    ``segments`` is the lookup's output, slice by slice: (width, (table, first
    column, width) of the shard it pooled, or None for a plain table). The
    projections run in float32 (half tables included); their results take the
    lookup's output dtype, the format the dist was built to send.
    """

    def __init__(
        self,
        output_dist: "BaseEmbeddingDist[EmbeddingShardingContext, torch.Tensor, torch.Tensor]",
        segments: Sequence[Segment],
        proj: nn.ModuleDict,
        group: Optional[dist.ProcessGroup],
        scale: float,
    ) -> None:
        super().__init__()
        self.output_dist = output_dist
        self._widths = [width for width, _ in segments]
        self._blocks = [block for _, block in segments]
        self._proj = proj
        self._group, self._scale = group, scale

    def forward(
        self, local_embs: torch.Tensor, sharding_ctx: Optional["EmbeddingShardingContext"] = None
    ) -> "Awaitable[torch.Tensor]":
        return self.output_dist(self._project(local_embs), sharding_ctx)

    def _project(self, local_embs):
        if not any(self._blocks):
            return local_embs
        used = list(dict.fromkeys(b for b in self._blocks if b))
        weights = [self._proj[table].block(c0, width) for table, c0, width in used]
        if (self._group is not None or self._scale != 1) and torch.is_grad_enabled():
            weights = SumGradients.apply(self._group, self._scale, *weights)
        weight_of = dict(zip(used, weights))
        out = []
        for piece, block in zip(local_embs.split(self._widths, dim=1), self._blocks):
            if block is None:
                out.append(piece)
            else:
                weight = weight_of[block]
                out.append(nn.functional.linear(piece.to(weight.dtype), weight).to(piece.dtype))
        return torch.cat(out, dim=1)


def narrowed(info: "EmbeddingShardingInfo", d: int) -> "EmbeddingShardingInfo":
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


def segments(lookup: nn.Module, hidden_dims: Mapping[str, int]) -> List[Segment]:
    """What a lookup's output holds, slice by slice (one per feature): see ``ProjectThenSend``."""
    while isinstance(lookup, DistributedDataParallel):
        lookup = lookup.module
    if not hasattr(lookup, "grouped_configs"):
        raise MLETError(f"cannot project the output of a {type(lookup).__name__} lookup before it is sent")
    segments = []
    for config in cast(List["GroupedEmbeddingConfig"], lookup.grouped_configs):  # TorchRec's lookups hold them
        for table in config.embedding_tables:
            block = None
            if hidden_dims[table.name]:
                c0 = table.local_metadata.shard_offsets[1] if table.local_metadata is not None else 0
                block = (table.name, c0, table.local_cols)
            segments += [(table.local_cols, block)] * table.num_features()
    return segments


def gradient_group(sharding_type: str, env: "ShardingEnv", device: torch.device) -> Optional[dist.ProcessGroup]:
    """The ranks that hold a row-sliced table's whole projection: their gradients add up."""
    if sharding_type == ShardingType.ROW_WISE.value:
        return env.process_group
    if sharding_type == ShardingType.TABLE_ROW_WISE.value:
        return intra_and_cross_node_pg(device, backend=dist.get_backend(env.process_group))[0]
    return None


def send_projected(ebc: "ShardedEmbeddingBagCollection", proj: nn.ModuleDict, hidden_dims: Mapping[str, int],
                   out_dims: Mapping[str, int], env: "ShardingEnv") -> None:
    """Rebuild a ``ShardedEmbeddingBagCollection``'s output side to send projected, d-wide rows.

    TorchRec builds the new output dists (``_update_output_dist``, its own
    rebuild after resharding) from the same shardings described at the
    projected widths; lookups, input dists and state stay as they are.
    """
    narrow = []
    for sharding_type, wide in zip(ebc._sharding_types, ebc._embedding_shardings):
        infos = [
            narrowed(info, out_dims[info.embedding_config.name]) if hidden_dims[info.embedding_config.name] else info
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
        ProjectThenSend(
            output_dist, segments(lookup, hidden_dims), proj,
            gradient_group(sharding_type, env, ebc._device),
            1.0 if sharding_type == ShardingType.DATA_PARALLEL.value else scale,
        )
        for output_dist, lookup, sharding_type in zip(ebc._output_dists, ebc._lookups, ebc._sharding_types)
    ]


def local_projections(module: "MLETEmbeddingBagCollection", plan: Dict[str, "ParameterSharding"],
                      env: "ShardingEnv", device: torch.device) -> nn.ModuleDict:
    """This rank's projection parameters, every one starting as rank 0's (as DDP's would).

    Of each projection a rank keeps the columns of the table shards it holds:
    all k where it holds whole rows (table-, row-, table-row-wise, data-parallel
    shards), ``B[:, c]`` for each column shard ``c``. Meta projections are
    initialised here, after the tables, in the order DMP would.
    """
    full = {}
    for table, projection in module.proj.items():
        # (the collection's projections: a weight tensor and the init spec it was built with)
        weight = cast(torch.Tensor, projection.weight)
        if weight.device.type == "meta":
            weight = init_projection_(torch.empty(weight.shape, device=device), cast(str, projection.init))
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
            shards[table] = ProjectionShards(weight, blocks)
    return shards


def add_column_blocks(kt: KeyedTensor, blocks: Sequence[int]) -> KeyedTensor:
    """Add each feature's ``n`` d-wide column-shard partials (``blocks``: n per key) into one."""
    parts = kt.values().split(kt.length_per_key(), dim=1)
    out = [p if n == 1 else p.unflatten(1, (n, -1)).sum(1) for p, n in zip(parts, blocks)]
    return KeyedTensor(keys=kt.keys(), length_per_key=[p.shape[1] for p in out], values=torch.cat(out, dim=1))
