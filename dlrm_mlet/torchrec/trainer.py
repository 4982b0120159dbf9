"""The MLET hooks of DLRM's TorchRec trainer (``torchrec_dlrm/dlrm_main.py``, patched).

The patch adds one line per hook and everything else lives here, so the
patch stays small. The table options are DLRM's own (``core/options.py``
registers and parses them for both trainers): ``--mlet-hidden-dim`` is one K
or a dash-separated list with one K per table (0 keeps a table plain), with
``--mlet-min-rows``, ``--mlet-proj-init`` and ``--mlet-table-dtype``. This
trainer also takes ``--mlet-rowwise-adagrad``: its ``--adagrad`` runs as fbgemm's
full Adagrad, one accumulator per table element, k/d times the folded table's
size again; row-wise keeps one per row. Bad values stop the trainer with one
line, as ``dlrm_s_pytorch.py`` does. The planner and DMP get ``sharders()``,
under which each rank projects before the all-to-all.
"""

import argparse
import sys
from typing import TYPE_CHECKING, Callable, List, Optional, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad

from ..core.options import add_table_arguments, check_table_count, parse_table_options
from ..errors import MLETError
from .collection import MLETEmbeddingBagCollection, sparse_parameters
from .fold import fold_torchrec_state_dict
from .sharding import sharders

if TYPE_CHECKING:
    from torchrec import EmbeddingBagConfig

__all__ = [
    "add_arguments", "collection_factory", "embedding_optimizer", "fold_after_training", "sharders",
    "sparse_parameters",
]


class _AsTyped:
    """An option's text kept as typed, for core's parser to read later.

    ``dlrm_main`` turns every option whose text is comma-separated integers
    into a list (``"32"`` would arrive as ``[32]``); it leaves non-strings alone.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return repr(self.text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``--mlet-*`` options (also spelt with underscores, like the trainer's own)."""
    group = parser.add_argument_group("MLET (dlrm-mlet)")
    add_table_arguments(group, underscores=True, type=_AsTyped)
    group.add_argument(
        "--mlet_folded_path", "--mlet-folded-path", default="dlrm_mlet_folded.pt",
        help="where rank 0 writes the folded, stock DLRM state dict after MLET training",
    )
    group.add_argument(
        "--mlet_rowwise_adagrad", "--mlet-rowwise-adagrad", action="store_true",
        help="with --adagrad: train the n x K tables with row-wise Adagrad (one accumulator per row) "
             "instead of full Adagrad (one per element)",
    )


def _options(args):
    try:
        return parse_table_options(args)
    except MLETError as error:
        sys.exit(f"ERROR: {error}")


def embedding_optimizer(args: argparse.Namespace,
                        optimizer: Type[torch.optim.Optimizer]) -> Type[torch.optim.Optimizer]:
    """The tables' fused optimizer: ``optimizer`` (the trainer's choice), or row-wise Adagrad if asked."""
    if not args.mlet_rowwise_adagrad:
        return optimizer
    if max(_options(args).dims) == 0:
        sys.exit("ERROR: --mlet-rowwise-adagrad has no effect without --mlet-hidden-dim K (K > 0)")
    if not args.adagrad:
        sys.exit("ERROR: --mlet-rowwise-adagrad needs --adagrad (it replaces the tables' full Adagrad)")
    return RowWiseAdagrad


def collection_factory(args: argparse.Namespace, dense_device: torch.device) -> Callable[..., nn.Module]:
    """What the trainer builds its embedding collection with: ``EmbeddingBagCollection``
    itself with MLET off, else an ``MLETEmbeddingBagCollection`` maker of the same call."""
    options = _options(args)
    if max(options.dims) == 0:
        return EmbeddingBagCollection

    def make(tables: List["EmbeddingBagConfig"], device: Optional[torch.device] = None) -> MLETEmbeddingBagCollection:
        try:
            check_table_count(options.dims, len(tables))  # named by its flag here
            ebc = MLETEmbeddingBagCollection(
                tables, options.dims, proj_init=options.proj_init, min_rows=options.min_rows,
                device=device, dense_device=dense_device, table_dtype=options.table_dtype,
            )
        except MLETError as error:
            sys.exit(f"ERROR: {error}")
        if not dist.is_initialized() or dist.get_rank() == 0:
            trained = [k for k in ebc.hidden_dims.values() if k]
            widths = "-".join(map(str, sorted(set(trained)))) or "-"
            dims = "-".join(sorted({str(c.embedding_dim) for c in tables}))
            stored = "" if options.table_dtype == "fp32" else f" ({options.table_dtype} tables)"
            print(f"MLET: {len(trained)} of {len(tables)} tables trained as n x {widths} -> {dims}{stored}",
                  flush=True)
        return ebc

    return make


def fold_after_training(model: nn.Module, args: argparse.Namespace) -> None:
    """With MLET on, fold ``model`` (every rank calls it) and have rank 0 write the stock file."""
    if max(_options(args).dims) > 0:
        fold_torchrec_state_dict(model, args.mlet_folded_path)
