"""A training-memory budget planner: the largest k per table that fits ``--mlet-memory-budget``.

MLET's price is paid while training, in table memory (``k/d`` times the
plain table, plus optimizer state), so the natural question is not "which
k" but "how much memory do I have". ``training_cost`` is the one statement
of what a table costs to train; ``plan_hidden_dims`` turns a budget into a k
per table (0 = plain) in the form ``--mlet-hidden-dim`` takes, by one of
two rules (``RULES``) whose merits are for training runs to settle, so the
default is one constant, ``DEFAULT_RULE``.

Importing this module does not import torch (the CLI's ``--help`` reads its
constants); the dtype sizes and the ``--mlet-min-rows`` rule come from core
modules that do, imported when a plan is made.
"""

import dataclasses
import json
import re
from collections import namedtuple
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Dict, List, Optional, Protocol, Tuple, Union

from ..errors import MLETError, integer
from . import rules
from .options import TABLE_DTYPE_BYTES, hidden_dim_for, parse_table_dtype_option

OPTIMIZERS = tuple(rules.RULES)  # DLRM's --optimizer names
RULES = ("uniform", "rare")
DEFAULT_RULE = "uniform"
RULE_HELP = "uniform (one K for all tables, the largest that fits) or rare (tables with the most rows seen " \
            "1-10 times in training first, each the largest K that fits what is left)"
MULTIPLE = 8  # fbgemm and vector kernels want widths divisible by 4 or 8
FLOAT32 = 4  # bytes: projections, plain tables and every optimizer accumulator are float32
BUDGET_FLAG = "--mlet-memory-budget"

_UNITS = {"": 1, "b": 1}
_UNITS.update({p + "b": 1000 ** (i + 1) for i, p in enumerate("kmgt")})
_UNITS.update({p + "ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")})
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

Cost = namedtuple("Cost", "weights state")
Cost.__doc__ = """Training bytes of one table: ``weights`` (table and projection) and optimizer ``state``."""


class TableConfig(Protocol):
    """What ``plan_tables`` reads of a table's config: TorchRec's ``EmbeddingBagConfig`` has it."""

    name: str
    num_embeddings: int
    embedding_dim: int


def parse_size(text: str, flag: str = BUDGET_FLAG) -> int:
    """``24GiB``, ``500MB``, ``1.5GiB``, ``1000000`` (bytes) as an int of bytes.

    KB..TB are powers of 1000, KiB..TiB powers of 1024, as their names say;
    units are case-insensitive. Exact arithmetic, so ``1.5GiB`` is exactly
    1610612736, rounded down to whole bytes.
    """
    match = _SIZE.fullmatch(str(text))
    unit = match and _UNITS.get(match.group(2).lower())
    if match is None or not unit:
        raise MLETError(f"{flag}: expected a size such as 24GiB or 500MB, got {text!r}")
    return int(Fraction(match.group(1)) * unit)


def format_bytes(nbytes: int) -> str:
    """``1.5 GiB``, ``121.07 MiB``, ``512 B``: two decimals at most, trailing zeros dropped."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f}".rstrip("0").rstrip(".") + " " + unit
    return f"{nbytes} B"


def optimizer_name(name: str) -> str:
    """DLRM's ``--optimizer`` name for ``name`` (``rowwise_adagrad`` is ``rwsadagrad``)."""
    return rules.named(name).name


def rule_name(name: str, flag: str = "--rule") -> str:
    key = str(name).strip().lower()
    if key not in RULES:
        raise MLETError(f"{flag}: expected one of {', '.join(RULES)}, got {name!r}")
    return key


def _dtype_bytes(table_dtype):
    return TABLE_DTYPE_BYTES[parse_table_dtype_option(table_dtype)]


def training_cost(n: int, d: int, k: int, table_dtype: str = "fp32", optimizer: str = "sgd") -> Cost:
    """What training one table holds in memory, as a ``Cost``; ``k = 0`` is a plain table.

    An MLET table is its ``n x k`` table (``table_dtype``) and a float32
    ``k x d`` projection. Adagrad keeps a float32 accumulator per element of
    both; DLRM's RWSAdagrad one per table row, but a full one for the
    projection, which is dense. A plain table is float32 whatever
    ``table_dtype`` says (that option only stores k-wide tables). Activations
    and gradients are per batch, not per row, and are left out.
    """
    rule, size = rules.named(optimizer), _dtype_bytes(table_dtype)
    n, d, k = integer(n, "table size", 0), integer(d, "embedding width d", 1), integer(k, "hidden width k", 0)
    if k == 0:
        return Cost(n * d * FLOAT32, rule.state_bytes(n, d))
    proj = d * k * FLOAT32
    dense = 0 if rule.state_key is None else proj  # a dense projection: a value per element, row-wise or not
    return Cost(n * k * size + proj, rule.state_bytes(n, k) + dense)


def training_bytes(n: int, d: int, k: int, table_dtype: str = "fp32", optimizer: str = "sgd") -> int:
    """``training_cost`` as one number of bytes."""
    return sum(training_cost(n, d, k, table_dtype, optimizer))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A k per table (0: plain) and what training takes with it."""

    rows: tuple
    dims: tuple  # d per table
    hidden_dims: tuple  # k per table, 0 = plain
    costs: tuple  # Cost per table
    budget: int
    rule: str
    optimizer: str
    table_dtype: str
    k_max: int
    scored_by: str  # what the rare rule ordered tables by ("rows" when no score was given)

    @property
    def table_bytes(self) -> Tuple[int, ...]:
        return tuple(sum(c) for c in self.costs)

    @property
    def total(self) -> int:
        return sum(self.table_bytes)

    @property
    def hidden_dim_arg(self) -> str:
        """The plan as ``--mlet-hidden-dim`` takes it: one K when all tables share it, else one per table."""
        ks = set(self.hidden_dims)
        return str(self.hidden_dims[0]) if len(ks) == 1 else "-".join(map(str, self.hidden_dims))


def candidates(d: int, k_max: int, multiple: int = MULTIPLE) -> List[int]:
    """The k a table of width ``d`` may get, ascending: multiples of ``multiple`` in [d, k_max], and k_max."""
    first = -(-d // multiple) * multiple
    ks = list(range(first, k_max + 1, multiple))
    return ks if ks and ks[-1] == k_max else ks + [k_max]


def _check(rows, d, k_max, rare, multiple, min_rows):
    rows = [integer(n, "table size", 1) for n in rows]
    if not rows:
        raise MLETError("no tables to plan")
    dims = [integer(v, "embedding width d", 1) for v in (d if hasattr(d, "__len__") else [d] * len(rows))]
    if len(dims) != len(rows):
        raise MLETError(f"{len(dims)} embedding widths for {len(rows)} tables")
    k_max = integer(k_max, "--mlet-hidden-dim", 1)
    for i, width in enumerate(dims):
        if k_max < width:
            where = f" (table {i})" if len(set(dims)) > 1 else ""
            raise MLETError(f"--mlet-hidden-dim {k_max} is below the embedding width d={width}{where}: "
                            "nothing to plan")
    if rare is not None:
        if len(rare) != len(rows):
            raise MLETError(f"{len(rare)} rare-row scores for {len(rows)} tables")
        if min(rare) < 0:
            raise MLETError("rare-row scores must be >= 0")
    integer(multiple, "multiple", 1)
    integer(min_rows, "--mlet-min-rows", 0)
    return rows, dims, k_max


def plan_hidden_dims(rows: Sequence[int], d: Union[int, Sequence[int]], k_max: int, budget: Union[int, str], *,
                     table_dtype: str = "fp32", optimizer: str = "sgd", rule: str = DEFAULT_RULE, min_rows: int = 0,
                     rare: Optional[Sequence[float]] = None, multiple: int = MULTIPLE,
                     what: str = BUDGET_FLAG) -> Plan:
    """The k per table (at most ``k_max``, at least d, else plain) whose training bytes fit ``budget``.

    ``rows``: table sizes; ``d``: one width or one per table; ``budget``:
    bytes or a size text (``"24GiB"``); ``rare``: optional per-table score
    (rows seen 1..10 times in training) for the ``rare`` rule. Tables with
    fewer than ``min_rows`` rows stay plain, as with ``--mlet-min-rows``.

    ``uniform``: one k, the largest candidate at which all tables together
    fit. ``rare``: tables in descending score (rows when no score is given:
    more rows, more rare values) each take the largest candidate that fits
    in what the tables before them left; one that cannot get d stays plain.
    A table whose cheapest MLET form costs less than plain (a half table
    with n >> d) takes that form up front: it fits whatever is left, so
    counting its saving first keeps the order what decides who gets more.
    ``what`` names the budget in errors.
    """
    rows, dims, k_max = _check(rows, d, k_max, rare, multiple, min_rows)
    optimizer, rule = optimizer_name(optimizer), rule_name(rule)
    _dtype_bytes(table_dtype)
    budget = parse_size(budget, what) if isinstance(budget, str) else integer(budget, what, 0)
    eligible = [i for i, n in enumerate(rows) if hidden_dim_for(i, n, (k_max,), min_rows) > 0]
    if not eligible:
        raise MLETError(f"--mlet-min-rows {min_rows} leaves no table for MLET (the largest has {max(rows)} rows)")

    def cost(i, k):
        return training_bytes(rows[i], dims[i], k, table_dtype, optimizer)

    plain = sum(cost(i, 0) for i in range(len(rows)))
    if rule == "uniform":
        ks = _uniform(len(rows), set(eligible), cost, plain, budget,
                      candidates(max(dims[i] for i in eligible), k_max, multiple))
    else:
        order = sorted(eligible, key=lambda i: (-(rare[i] if rare is not None else rows[i]), i))
        ks = _rare(order, cost, len(rows), budget, [candidates(dims[i], k_max, multiple) for i in range(len(rows))])
    if ks is None:
        _refuse(what, budget, plain, optimizer, rule, eligible, cost, dims, k_max, multiple)
    costs = tuple(training_cost(n, w, k, table_dtype, optimizer) for n, w, k in zip(rows, dims, ks))
    return Plan(tuple(rows), tuple(dims), tuple(ks), costs, budget, rule, optimizer,
                str(table_dtype).strip().lower(), k_max, "rows" if rare is None else "rare rows")


def _uniform(tables, eligible, cost, plain, budget, ks):
    """The largest common k that fits (cost grows with k: the first fit from the top), or None."""
    base = plain - sum(cost(i, 0) for i in eligible)
    for k in reversed(ks):
        if base + sum(cost(i, k) for i in eligible) <= budget:
            return [k if i in eligible else 0 for i in range(tables)]
    return None


def _rare(order, cost, tables, budget, ks):
    """Greedy by score: each table the largest candidate fitting what is left; None if no MLET table fits."""
    chosen = [0] * tables
    for i in order:  # the saving first (see plan_hidden_dims): these fit whatever is left
        if cost(i, ks[i][0]) < cost(i, 0):
            chosen[i] = ks[i][0]
    left = budget - sum(cost(i, k) for i, k in enumerate(chosen))
    if left < 0:
        return None
    for i in order:
        now = cost(i, chosen[i])
        fits = [k for k in ks[i] if k >= chosen[i] and cost(i, k) - now <= left]
        if fits:
            left -= cost(i, fits[-1]) - now
            chosen[i] = fits[-1]
    return chosen if any(chosen) else None


def _refuse(what, budget, plain, optimizer, rule, eligible, cost, dims, k_max, multiple):
    """Why no plan fits, in one line."""
    if budget < plain:
        raise MLETError(f"{what} {format_bytes(budget)} is below what the tables take even plain "
                        f"({format_bytes(plain)} with {optimizer})")
    if rule == "uniform":
        k = candidates(max(dims[i] for i in eligible), k_max, multiple)[0]
        more = sum(cost(i, k) - cost(i, 0) for i in eligible)
        raise MLETError(f"{what} {format_bytes(budget)} fits no uniform k: the tables take {format_bytes(plain)} "
                        f"plain, and k={k} on all {len(eligible)} MLET tables needs {format_bytes(more)} more "
                        "(the rare rule gives k to some tables only)")
    more, i = min((cost(i, candidates(dims[i], k_max, multiple)[0]) - cost(i, 0), i) for i in eligible)
    k = candidates(dims[i], k_max, multiple)[0]
    raise MLETError(f"{what} {format_bytes(budget)} fits no MLET table: the tables take {format_bytes(plain)} "
                    f"plain, and the cheapest MLET table (table {i}, k={k}) needs {format_bytes(more)} more")


def plan_tables(configs: Iterable[TableConfig], budget: Union[int, str], hidden_dim: int, *, table_dtype: str = "fp32",
                optimizer: str = "sgd", rule: str = DEFAULT_RULE, min_rows: int = 0,
                rare: Union[Sequence[float], Mapping[str, float], None] = None, multiple: int = MULTIPLE,
                what: str = "memory budget") -> Tuple[Plan, Dict[str, int]]:
    """``plan_hidden_dims`` for TorchRec ``EmbeddingBagConfig``s: ``(plan, {table name: k})``.

    The mapping is what ``MLETEmbeddingBagCollection`` takes as ``hidden_dim``
    (0 keeps a table plain). ``rare`` may be a sequence in table order or a
    mapping by table name (tables it does not name score 0).
    """
    configs = list(configs)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise MLETError(f"table names must be unique, got {names}")
    if isinstance(rare, Mapping):
        unknown = sorted(set(rare) - set(names))
        if unknown:
            raise MLETError(f"rare-row scores name unknown tables: {', '.join(unknown)}")
        rare = [rare.get(name, 0) for name in names]
    plan = plan_hidden_dims([c.num_embeddings for c in configs], [c.embedding_dim for c in configs], hidden_dim,
                            budget, table_dtype=table_dtype, optimizer=optimizer, rule=rule, min_rows=min_rows,
                            rare=rare, multiple=multiple, what=what)
    return plan, dict(zip(names, plan.hidden_dims))


def format_plan(plan: Plan, names: Optional[Sequence[str]] = None) -> str:
    """The plan as text: a line per table, the total against the budget, and the flag to paste.

    With ``names`` (TorchRec tables) also the ``{name: k}`` mapping, as JSON.
    """
    given = names is not None
    names = [str(i) for i in range(len(plan.rows))] if names is None else [str(n) for n in names]
    width = max(5, *map(len, names))
    lines = [f"{'table':<{width}} {'rows':>12} {'d':>5} {'k':>6} {'train bytes':>12}"]
    for name, n, d, k, size in zip(names, plan.rows, plan.dims, plan.hidden_dims, plan.table_bytes):
        lines.append(f"{name:<{width}} {n:>12} {d:>5} {k if k else 'plain':>6} {format_bytes(size):>12}")
    weights, state = (sum(c[j] for c in plan.costs) for j in (0, 1))
    mlet = sum(k > 0 for k in plan.hidden_dims)
    order = f", tables ordered by {plan.scored_by}" if plan.rule == "rare" else ""
    lines.append(f"total {format_bytes(plan.total)} of {format_bytes(plan.budget)} budget "
                 f"(weights {format_bytes(weights)}, {plan.optimizer} state {format_bytes(state)}; "
                 f"{mlet}/{len(plan.rows)} MLET tables, {plan.table_dtype} tables, rule {plan.rule}{order})")
    lines.append(f"--mlet-hidden-dim={plan.hidden_dim_arg}")
    if given:  # what MLETEmbeddingBagCollection takes as hidden_dim
        lines.append(f"hidden_dim={json.dumps(dict(zip(names, plan.hidden_dims)))}")
    return "\n".join(lines)
