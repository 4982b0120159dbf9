"""MLET for TorchRec: k-wide tables in a standard EmbeddingBagCollection.

The ``n x k`` tables live in a stock ``torchrec.EmbeddingBagCollection``, so
``DistributedModelParallel`` shards them with its default sharders and its
planner counts their real (k-wide) memory. Each table's ``k -> d`` projection
is a small dense layer outside that collection, so under the default sharders
DMP trains it data-parallel with the MLPs, after the k-wide pooled rows have
crossed the network; under ``sharding.sharders()`` each rank projects its
shards' rows before they are sent. ``MLETEmbeddingBagCollection`` presents the folded (d-wide)
configs and a d-wide ``KeyedTensor``, which is all ``torchrec.models.dlrm``
asks of an embedding collection, so every DLRM variant takes it unchanged.

A table given no k (0), or with fewer than ``min_rows`` rows, stays plain: it
sits d-wide in the same collection without a projection, and folds to itself.
``table_dtype`` stores the k-wide tables in fp16 or bf16 (``core/half.py``): it
goes into their configs' ``data_type``, so fbgemm's kernels store them at half
width and the planner counts half the bytes; projections, pooled outputs and
the folded tables stay float32. fbgemm updates them in its fused backward
with its ``stochastic_rounding`` on (TorchRec's default), which its CUDA
kernels honour and its CPU kernels do not (``_check_table_dtype``).

Tables and projections start as the core layers do (``core/init.py``) and fold
with ``core/folding.fold_weight``; folding a whole model, sharded or not, is
``fold.fold_torchrec_state_dict``.
"""

import dataclasses
import warnings
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Union, cast

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedTensor
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import DataType, PoolingType
from torchrec.modules.embedding_modules import get_embedding_names_by_table

from ..core.convert import register_kind
from ..core.folding import fold_weight
from ..core.half import TableDtype, table_dtype as parse_table_dtype
from ..core.init import init_projection_, uniform_table_
from ..core.options import TABLE_DTYPE_REGISTRY, HiddenDim, hidden_dim_for, hidden_dims, parse_proj_init
from ..errors import MLETError, integer

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

FOLDABLE_POOLINGS = (PoolingType.SUM, PoolingType.MEAN)
DATA_TYPES = {getattr(torch, entry[1]): getattr(DataType, entry[2]) for entry in TABLE_DTYPE_REGISTRY.values()}


class _Projection(nn.Module):
    """One table's ``k -> d`` map: ``nn.Linear(k, d, bias=False)`` with MLET's init.

    Its own ``reset_parameters`` matters when it is built on the meta device:
    DMP then materialises it by calling that method, and ``nn.Linear``'s would
    give Kaiming init instead of N(0, 0.25^2).
    """

    def __init__(self, in_features: int, out_features: int, init: str,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.init = init
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.device.type != "meta":
            init_projection_(self.weight, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"{in_features} -> {out_features}, init={self.init!r}"


def _hidden_dims(hidden_dim, tables, min_rows):
    """Each table's k (0: plain): core's resolver (one k, a sequence in table order, a mapping by
    name, a callable), then ``min_rows``, the rule DLRM's ``--mlet-hidden-dim`` lists share."""
    k_of = hidden_dims(hidden_dim, [c.name for c in tables])
    return {c.name: hidden_dim_for(0, c.num_embeddings, (k_of(c.name, c)[0],), min_rows) for c in tables}


def _check_table_dtype(dtype, device, dense_device):
    """Refuse the half formats TorchRec cannot train where the model will run; warn on fp16 on the CPU.

    The model runs where its dense part does (DMP's device), else where the
    tables are, else on torch's default device. Measured with fbgemm-gpu-cpu
    1.8 and torchrec 1.8: fbgemm's CPU table kernels have no bf16 forward, and
    an unsharded ``EmbeddingBagCollection`` stores every non-fp32 table as
    fp16; so bf16 trains only sharded by DMP on a GPU. fbgemm's CPU kernels
    take fp16 tables but ignore ``stochastic_rounding``: they round each
    update to nearest, so updates below half an fp16 step are lost.
    """
    if dtype == torch.float32:
        return
    runs_on = next(
        (d.type for d in (dense_device, device) if d is not None and d.type != "meta"),
        torch.get_default_device().type,
    )
    if dtype == torch.bfloat16 and runs_on == "cpu":
        raise MLETError("table_dtype bf16 is not trainable on the CPU: fbgemm's CPU embedding kernels have "
                        "no bf16 tables; use fp16 or fp32")
    if dtype == torch.bfloat16 and (device is None or device.type != "meta"):
        raise MLETError("table_dtype bf16 needs device='meta' and DistributedModelParallel: an unsharded "
                        "EmbeddingBagCollection stores bf16 tables as fp16")
    if runs_on == "cpu":
        warnings.warn("table_dtype fp16 on the CPU: table updates round to nearest (fbgemm's CPU kernels "
                      "ignore stochastic_rounding), so updates below half an fp16 step are lost", stacklevel=3)


class _Tables(Protocol):
    """What ``TableAccessors`` reads of the collection it is mixed into."""

    @property
    def _configs(self) -> List[EmbeddingBagConfig]: ...

    @property
    def _is_weighted(self) -> bool: ...

    @property
    def hidden_dims(self) -> Mapping[str, int]: ...


@register_kind  # fold_model folds it like core's MLET modules
class TableAccessors:
    """What an MLET collection says of its tables, sharded or not (from its ``_configs``, ``_is_weighted``
    and ``hidden_dims``): the accessors DLRM and TorchRec read."""

    def embedding_bag_configs(self: _Tables) -> List[EmbeddingBagConfig]:
        """The d-wide configs: what DLRM reads, and what the folded model is built from."""
        return self._configs

    def is_weighted(self: _Tables) -> bool:
        return self._is_weighted

    @property
    def hidden_dim(self: _Tables) -> int:
        """The largest k (0 when every table is plain)."""
        return max(self.hidden_dims.values())


class MLETEmbeddingBagCollection(TableAccessors, nn.Module):
    """Stands in for ``EmbeddingBagCollection`` in a TorchRec model, trained as MLET.

    ``ebc`` is a standard collection of the same tables, each at its width k
    (``hidden_dim``: one k, a sequence in table order or a mapping by table
    name; a table with k = 0 or fewer than ``min_rows`` rows keeps its own
    width d and no projection); ``proj[table]`` maps each pooled k-vector to
    the table's ``embedding_dim`` (d). ``table_dtype`` (``"fp32"``, ``"fp16"``,
    ``"bf16"`` or a torch dtype; None: fp32) is the k-wide tables' storage;
    plain tables keep their own config's. ``embedding_bag_configs()`` and the
    output are those of the d-wide collection it folds into, feature for
    feature, so DLRM sees no difference. Build the tables on ``device="meta"``
    for DMP (TorchRec then initialises the shards with the same
    U(-sqrt(1/n), sqrt(1/n)) from torch's RNG); on a real device they get
    DLRM's init from numpy's RNG, like ``MLETEmbeddingBag``.
    """

    def __init__(
        self,
        tables: Iterable[EmbeddingBagConfig],
        hidden_dim: HiddenDim[EmbeddingBagConfig],
        proj_init: str = "normal",
        is_weighted: bool = False,
        device: Union[str, torch.device, None] = None,
        dense_device: Union[str, torch.device, None] = None,
        allow_narrow: bool = False,
        min_rows: int = 0,
        table_dtype: TableDtype = None,
    ) -> None:
        super().__init__()
        proj_init = parse_proj_init(proj_init)
        dtype = parse_table_dtype(table_dtype)
        tables = list(tables)
        if not tables:
            raise MLETError("MLETEmbeddingBagCollection needs at least one table")
        for config in tables:
            if not isinstance(config, EmbeddingBagConfig):
                raise MLETError(f"tables must be EmbeddingBagConfig, got {type(config).__name__}")
        widths = _hidden_dims(hidden_dim, tables, integer(min_rows, "min_rows", 0))
        for config in tables:
            k = widths[config.name]
            if k and config.pooling not in FOLDABLE_POOLINGS:
                raise MLETError(
                    f"table {config.name!r}: pooling {config.pooling.name} cannot be folded "
                    "exactly; use SUM or MEAN"
                )
            if k and k < config.embedding_dim and not allow_narrow:
                raise MLETError(
                    f"table {config.name!r}: hidden_dim {k} is below its embedding_dim "
                    f"{config.embedding_dim} (a bottleneck, not MLET); pass allow_narrow=True "
                    "to allow it"
                )
            if not config.feature_names:
                config.feature_names = [config.name]  # as EmbeddingBagCollection does
        device = torch.device(device) if device is not None else None
        dense_device = torch.device(dense_device) if dense_device is not None else None
        if any(widths.values()):
            _check_table_dtype(dtype, device, dense_device)
        self.table_dtype = dtype
        self._configs = tables
        self._is_weighted = is_weighted
        # init_fn is dropped so a wide config computes its own default, with
        # the same bounds (they depend on n only); plain tables keep theirs.
        # data_type is what fbgemm's kernels and the planner read.
        wide = [
            dataclasses.replace(c, embedding_dim=widths[c.name], init_fn=None, data_type=DATA_TYPES[dtype])
            if widths[c.name] else dataclasses.replace(c)
            for c in tables
        ]
        self.ebc = EmbeddingBagCollection(tables=wide, is_weighted=is_weighted, device=device)
        for bag in self.ebc.embedding_bags.values():
            if bag.weight.device.type != "meta":
                uniform_table_(bag.weight)
        self.proj = nn.ModuleDict(
            {
                c.name: _Projection(widths[c.name], c.embedding_dim, proj_init, dense_device)
                for c in tables
                if widths[c.name]
            }
        )
        names = get_embedding_names_by_table(tables)
        self._outputs = [(n, c.name) for c, table_names in zip(tables, names) for n in table_names]

    @property
    def hidden_dims(self) -> Dict[str, int]:
        """Each table's k; 0 for the tables that train plain."""
        return {  # (proj holds _Projections)
            c.name: cast(_Projection, self.proj[c.name]).weight.shape[1] if c.name in self.proj else 0
            for c in self._configs
        }

    def forward(self, features: "KeyedJaggedTensor") -> KeyedTensor:
        # Under DMP self.ebc is sharded and returns a lazy KeyedTensor; to_dict
        # waits for it, as DLRM's SparseArch does. A half table's pooled output
        # is projected in the projection's dtype (float32).
        pooled = self.ebc(features).to_dict()
        out = [
            self.proj[table](pooled[name].to(self.proj[table].weight.dtype)) if table in self.proj else pooled[name]
            for name, table in self._outputs
        ]
        return KeyedTensor(
            keys=[name for name, _ in self._outputs],
            length_per_key=[v.shape[1] for v in out],
            values=torch.cat(out, dim=1),
        )

    def fold(self, name: Optional[str] = None) -> EmbeddingBagCollection:
        """The equivalent plain d-wide ``EmbeddingBagCollection`` (unsharded models only).

        ``name`` (where it sits in a model, for ``fold_model``) prefixes the table
        names in errors. Plain tables are copied as they are. Built from
        ``embedding_bag_configs()``, so half k-wide tables fold (in float32)
        into float32 tables unless those configs say otherwise.
        """
        if type(self.ebc) is not EmbeddingBagCollection:
            raise MLETError(
                "fold() needs an unsharded model; use fold_torchrec_state_dict(model) for a "
                "DistributedModelParallel one"
            )
        first = next(iter(self.ebc.embedding_bags.values())).weight
        where = f"{name}." if name else ""
        folded = {  # (proj holds _Projections)
            table: fold_weight(bag.weight, cast(_Projection, self.proj[table]).weight, where + table)
            if table in self.proj else bag.weight.detach()
            for table, bag in self.ebc.embedding_bags.items()
        }
        # Built on meta and then filled, so folding draws no random numbers.
        plain = EmbeddingBagCollection(
            tables=list(self._configs), is_weighted=self._is_weighted, device="meta"
        )
        plain = plain.to_empty(device=first.device)
        plain._device = first.device
        with torch.no_grad():
            for table, weight in folded.items():
                plain.embedding_bags[table].weight.copy_(weight)
        return plain


def mlet_dlrm(
    tables: Iterable[EmbeddingBagConfig],
    hidden_dim: HiddenDim[EmbeddingBagConfig],
    dense_in_features: int,
    dense_arch_layer_sizes: List[int],
    over_arch_layer_sizes: List[int],
    proj_init: str = "normal",
    dense_device: Union[str, torch.device, None] = None,
    table_device: Union[str, torch.device, None] = None,
    min_rows: int = 0,
    table_dtype: TableDtype = None,
) -> DLRM:
    """A stock ``torchrec.models.dlrm.DLRM`` whose tables train as MLET.

    ``tables`` are the d-wide configs of the model you will deploy; pass
    ``table_device=torch.device("meta")`` when DMP will shard the tables.
    ``hidden_dim``, ``min_rows`` and ``table_dtype`` are as for
    ``MLETEmbeddingBagCollection``.
    """
    ebc = MLETEmbeddingBagCollection(
        tables, hidden_dim, proj_init=proj_init, device=table_device, dense_device=dense_device,
        min_rows=min_rows, table_dtype=table_dtype,
    )
    return DLRM(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in_features,
        dense_arch_layer_sizes=dense_arch_layer_sizes,
        over_arch_layer_sizes=over_arch_layer_sizes,
        dense_device=dense_device,
    )


def sparse_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Parameters for TorchRec's fused (in-backward) embedding optimizer.

    Those of every ``EmbeddingBagCollection`` in ``model``: the k-wide (and
    plain) tables of an MLET model, all tables of a plain one. MLET
    projections are left out on purpose: they are dense (data-parallel under
    the default sharders, held with their table shards under ``sharders()``)
    and belong with the dense optimizer (and its learning-rate schedule).
    """
    for module in model.modules():
        if type(module) is EmbeddingBagCollection:
            yield from module.parameters()
