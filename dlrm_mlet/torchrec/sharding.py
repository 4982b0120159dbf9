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
described at the projected widths, with each output dist projecting the
lookup's pooled rows on the way in (``projected.py``).

Gradients come out as DDP's averaged ones did: TorchRec's output dists divide
the gradient they send back by the world size (its gradient division, on by
default), which is DDP's average; where it is switched off the projections
divide by the world size themselves. The dense optimizer trains them, as before.

State dict: ``ebc.embedding_bags.<table>.weight`` as TorchRec shards it;
``proj.<table>.weight`` where a rank holds all k columns of its shards (the
same values on every rank holding it), and ``proj.<table>.columns.<first
column>`` for each column shard it holds, so no two ranks hold different
values under one key: ``torch.distributed.checkpoint`` saves each once, for
the parameters and the dense optimizer's state alike, and ``fold_torchrec_state_dict``
folds every shard with the columns it was trained with.
"""

from functools import partial
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Type

import torch
from torchrec import EmbeddingBagCollection, KeyedTensor
from torchrec.distributed.embedding_types import BaseEmbeddingSharder, KJTList, ShardedEmbeddingModule
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionContext, EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingEnv2D, ShardingType
from torchrec.distributed.utils import append_prefix
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from ..errors import MLETError
from .collection import MLETEmbeddingBagCollection, TableAccessors
from .projected import add_column_blocks, local_projections, send_projected

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor
    from torchrec.distributed.types import (
        Awaitable, LazyAwaitable, ModuleSharder, ParameterSharding, QuantizedCommCodecs, ShardingEnv,
    )

SHARDING_TYPES = tuple(
    t.value for t in (
        ShardingType.DATA_PARALLEL, ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE,
        ShardingType.TABLE_COLUMN_WISE, ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE,
    )
)


def sharders() -> List["ModuleSharder[torch.nn.Module]"]:
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

    def __init__(
        self,
        ebc_sharder: Optional[EmbeddingBagCollectionSharder] = None,
        qcomm_codecs_registry: Optional[Dict[str, "QuantizedCommCodecs"]] = None,
    ) -> None:
        self._ebc_sharder = ebc_sharder or EmbeddingBagCollectionSharder(qcomm_codecs_registry=qcomm_codecs_registry)
        super().__init__(qcomm_codecs_registry=self._ebc_sharder.qcomm_codecs_registry)

    def shard(
        self,
        module: MLETEmbeddingBagCollection,
        params: Dict[str, "ParameterSharding"],
        env: "ShardingEnv",
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> "ShardedMLETEmbeddingBagCollection":
        return ShardedMLETEmbeddingBagCollection(
            module, params, self._ebc_sharder, env, device or torch.device("cuda"), module_fqn
        )

    @property
    def fused_params(self) -> Optional[Dict[str, Any]]:
        return self._ebc_sharder.fused_params

    def shardable_parameters(self, module: MLETEmbeddingBagCollection) -> Dict[str, torch.nn.Parameter]:
        return self._ebc_sharder.shardable_parameters(module.ebc)

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return [t for t in self._ebc_sharder.sharding_types(compute_device_type) if t in SHARDING_TYPES]

    def compute_kernels(self, sharding_type: str, compute_device_type: str) -> List[str]:
        return self._ebc_sharder.compute_kernels(sharding_type, compute_device_type)

    @property
    def module_type(self) -> Type[MLETEmbeddingBagCollection]:
        return MLETEmbeddingBagCollection

    @property
    def sharded_module_type(self) -> Type["ShardedMLETEmbeddingBagCollection"]:
        return ShardedMLETEmbeddingBagCollection


class ShardedMLETEmbeddingBagCollection(
    TableAccessors, ShardedEmbeddingModule[KJTList, list, KeyedTensor, EmbeddingBagCollectionContext]
):
    """An ``MLETEmbeddingBagCollection`` sharded so that its output distribution carries d-wide rows.

    ``ebc`` is TorchRec's ``ShardedEmbeddingBagCollection`` of the k-wide
    tables (built by the EBC sharder given), whose output dists project;
    ``proj[table]`` is this rank's part of each projection. Like the
    unsharded collection it presents the d-wide configs and a d-wide output.
    """

    def __init__(
        self,
        module: MLETEmbeddingBagCollection,
        table_name_to_parameter_sharding: Dict[str, "ParameterSharding"],
        ebc_sharder: EmbeddingBagCollectionSharder,
        env: "ShardingEnv",
        device: torch.device,
        module_fqn: Optional[str] = None,
    ) -> None:
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
        self.proj = local_projections(module, plan, env, device)
        out_dims = {c.name: c.embedding_dim for c in self._configs}
        send_projected(self.ebc, self.proj, self.hidden_dims, out_dims, env)
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

    def create_context(self) -> EmbeddingBagCollectionContext:
        return self.ebc.create_context()

    def input_dist(
        self, ctx: EmbeddingBagCollectionContext, features: "KeyedJaggedTensor"
    ) -> "Awaitable[Awaitable[KJTList]]":
        return self.ebc.input_dist(ctx, features)

    def compute(self, ctx: EmbeddingBagCollectionContext, dist_input: KJTList) -> List[torch.Tensor]:
        return self.ebc.compute(ctx, dist_input)

    def output_dist(
        self, ctx: EmbeddingBagCollectionContext, output: List[torch.Tensor]
    ) -> "LazyAwaitable[KeyedTensor]":
        return self._added(self.ebc.output_dist(ctx, output))

    def compute_and_output_dist(
        self, ctx: EmbeddingBagCollectionContext, input: KJTList
    ) -> "LazyAwaitable[KeyedTensor]":
        return self._added(self.ebc.compute_and_output_dist(ctx, input))

    def _added(self, awaitable):
        if self._column_blocks is not None:
            awaitable.callbacks.append(partial(add_column_blocks, blocks=self._column_blocks))
        return awaitable

    def sharded_parameter_names(self, prefix: str = "") -> Iterator[str]:
        """The tables' and the model-parallel projections' parameters, which DMP's DDP must leave alone."""
        yield from self.ebc.sharded_parameter_names(append_prefix(prefix, "ebc"))
        for table, shards in self.proj.items():
            if table not in self._data_parallel:
                for name, _ in shards.named_parameters(prefix=append_prefix(prefix, f"proj.{table}")):
                    yield name

    @property
    def unsharded_module_type(self) -> Type[MLETEmbeddingBagCollection]:
        return MLETEmbeddingBagCollection
