"""The table options MLET takes on a command line, parsed once for every trainer.

DLRM's ``dlrm_s_pytorch.py`` and its TorchRec trainer (``torchrec_dlrm/dlrm_main.py``)
both take ``--mlet-hidden-dim`` (one K, or one per table), ``--mlet-min-rows``,
``--mlet-proj-init`` and ``--mlet-table-dtype``. They are registered and parsed here so the two trainers
accept the same forms and refuse the same mistakes with the same one-line
message. Values are registered as strings and parsed after argparse, so a bad
value gets an ``MLETError`` naming the flag rather than a page of usage text.
"""

import argparse
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Tuple, TypeVar, Union

import math

from ..errors import MLETError, integer

# The k-wide tables' storage, the one registry of table dtypes: name -> (bytes a value, torch's dtype name,
# TorchRec's DataType name). half.py and torchrec/collection.py read their dtypes from it.
TABLE_DTYPE_REGISTRY = {"fp32": (4, "float32", "FP32"), "fp16": (2, "float16", "FP16"), "bf16": (2, "bfloat16", "BF16")}
TABLE_DTYPE_BYTES = {name: entry[0] for name, entry in TABLE_DTYPE_REGISTRY.items()}
PROJ_INITS = "normal, normal-<std>, xavier, orthogonal"

Table = TypeVar("Table")
# A k per table as Python gives it (``hidden_dims``): one k, a k per name, a list in table order, or
# ``(name, table) -> k``; Table is what the tables are (to_mlet's modules, TorchRec's configs).
HiddenDim = Union[int, Mapping[str, Optional[int]], Sequence[Optional[int]], Callable[[str, Table], Optional[int]]]

TableOptions = namedtuple("TableOptions", "dims min_rows proj_init table_dtype")
TableOptions.__doc__ = """Parsed table options: ``dims`` from ``parse_hidden_dims``; MLET is on when ``max(dims) > 0``."""

_FLAGS = (  # flag, default, metavar, help
    ("--mlet-hidden-dim", "0", "K",
     "train each table as n x K then K -> d (K >> d); 0 = off (default); "
     "K1-K2-...: one K per table (0 keeps that table plain)"),
    ("--mlet-min-rows", "0", "N", "tables with fewer than N rows stay plain (default 0: all tables)"),
    ("--mlet-proj-init", "normal", "INIT",
     "projection init: normal (N(0, 0.25^2)), normal-<std>, xavier, orthogonal"),
    ("--mlet-table-dtype", "fp32", "DTYPE",
     "storage of the n x K tables: fp32 (default), fp16 or bf16 (half the bytes; updated with "
     "stochastic rounding; projection, pooling math and the folded table stay fp32)"),
)


def add_table_arguments(parser: argparse._ActionsContainer, underscores: bool = False, **kwargs: Any) -> None:
    """Register the table options on ``parser`` (or an argument group).

    ``underscores`` also accepts ``--mlet_hidden_dim`` etc., the spelling of
    the TorchRec trainer's own flags; the ``args`` attribute is the same.
    ``kwargs`` go to each ``add_argument`` (a trainer's ``type``, say).
    """
    for flag, default, metavar, text in _FLAGS:
        names = ("--" + flag[2:].replace("-", "_"), flag) if underscores else (flag,)
        parser.add_argument(*names, dest=flag[2:].replace("-", "_"), default=default,
                            metavar=metavar, help=text, **kwargs)


def hidden_dims(hidden_dim: HiddenDim[Table], names: Sequence[str], what: str = "hidden_dim",
                kind: str = "table") -> Callable[[str, Table], Tuple[int, bool]]:
    """A Python ``hidden_dim`` as ``(name, obj) -> (k, given by name)``; 0 keeps a table plain.

    One k for every table (an integer >= 1), a mapping by name (tables it does
    not name stay plain), a sequence in the order of ``names`` (one value: for
    all, as on the command line), or a callable ``(name, obj) -> k`` (None: plain).
    "Given by name" is True for a mapping or callable: an explicit choice.
    """
    def k_of(value, name):
        return integer(0 if value is None else value, f"{what} of {name!r}", 0)

    if isinstance(hidden_dim, Mapping):
        unknown = [key for key in hidden_dim if key not in names]
        if unknown:
            raise MLETError(f"{what} names no {kind} called {', '.join(map(repr, unknown))}")
        return lambda name, obj: (k_of(hidden_dim.get(name), name), True)
    if callable(hidden_dim):
        return lambda name, obj: (k_of(hidden_dim(name, obj), name), True)
    if isinstance(hidden_dim, Sequence) and not isinstance(hidden_dim, str):
        dims = list(hidden_dim)
        if not dims:
            raise MLETError(f"{what}: an empty list gives no table a k")
        check_table_count(dims, len(names), what)
        position = {name: i for i, name in enumerate(names)}
        return lambda name, obj: (k_of(dims[position[name]] if len(dims) > 1 else dims[0], name), False)
    k = integer(hidden_dim, what, 1)
    return lambda name, obj: (k, False)


def parse_hidden_dims(raw: Union[str, int]) -> Tuple[int, ...]:
    """``K`` or ``K1-K2-...`` (one per table, like ``--arch-embedding-size``) as a tuple of ints."""
    text = str(raw).strip()
    try:
        values = tuple(int(v) for v in text.split("-")) if "-" in text.strip("-") else (int(text),)
    except ValueError:
        values = (-1,)
    if min(values) < 0:
        raise MLETError(
            f"--mlet-hidden-dim: expected an integer >= 0 or a dash-separated list of them, got {raw!r}"
        )
    return values


def parse_proj_init(spec: str) -> str:
    """Check a projection-init name early, so a typo fails before any work."""
    if spec in ("normal", "xavier", "orthogonal"):
        return spec
    if spec.startswith("normal-"):
        try:
            std = float(spec[len("normal-"):])
        except ValueError:
            std = -1.0
        if math.isfinite(std) and std > 0:
            return spec
    raise MLETError(f"unknown projection init {spec!r}; expected one of {PROJ_INITS}")


def parse_proj_init_option(text: str) -> str:
    """``--mlet-proj-init``: core's init names, with the flag named in the error."""
    try:
        return parse_proj_init(str(text).strip())
    except MLETError as error:
        raise MLETError(f"--mlet-proj-init: {error}") from None


def parse_table_dtype_option(text: str) -> str:
    """``--mlet-table-dtype``: one of ``TABLE_DTYPE_BYTES``' names."""
    name = str(text).strip().lower()
    if name not in TABLE_DTYPE_BYTES:
        raise MLETError(f"--mlet-table-dtype: expected one of {', '.join(TABLE_DTYPE_BYTES)}, got {text!r}")
    return name


def parse_table_options(args: argparse.Namespace) -> TableOptions:
    """The table options from an argparse namespace, checked together.

    ``--mlet-min-rows``, ``--mlet-proj-init`` and ``--mlet-table-dtype`` do
    nothing with MLET off, so giving them without a K > 0 is refused rather
    than silently ignored.
    """
    dims = parse_hidden_dims(args.mlet_hidden_dim)
    min_rows = integer(args.mlet_min_rows, "--mlet-min-rows", 0, text=True)
    proj_init = parse_proj_init_option(args.mlet_proj_init)
    table_dtype = parse_table_dtype_option(getattr(args, "mlet_table_dtype", "fp32"))
    if max(dims) == 0:
        for flag, value, default in (("--mlet-min-rows", min_rows, 0), ("--mlet-proj-init", proj_init, "normal"),
                                     ("--mlet-table-dtype", table_dtype, "fp32")):
            if value != default:
                raise MLETError(f"{flag} has no effect without --mlet-hidden-dim K (K > 0)")
    return TableOptions(dims, min_rows, proj_init, table_dtype)


def check_table_count(dims: Sequence[Optional[int]], tables: int, what: str = "--mlet-hidden-dim") -> None:
    """A per-table list must give one K per table; one K applies to all."""
    if len(dims) > 1 and len(dims) != tables:
        raise MLETError(f"{what} lists {len(dims)} values for {tables} tables")


def hidden_dim_for(index: int, rows: int, dims: Sequence[int], min_rows: int) -> int:
    """Table ``index``'s K: its own (or the one K for all), 0 (plain) below ``min_rows`` rows."""
    k = dims[index] if len(dims) > 1 else dims[0]
    return k if k > 0 and rows >= min_rows else 0
