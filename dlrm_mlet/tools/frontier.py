"""``dlrm-mlet frontier``: serving size against tuned test AUC across every model a stock DLRM loads.

A serving team picks the smallest model that keeps its AUC, from every
compression that still loads into stock DLRM: plain tables, QR and MD tables,
each trained plain or with MLET, each served in fp32 or (plain tables only,
stock's rule) with DLRM's int8/int4 tables or int8 in ONNX Runtime. Sweep CSVs
hold them as rows (``tables``, and the ``*_int8``/``*_int4``/``*_onnx_int8``
columns of ``sweep --quantize``);
each (configuration, d, k, precision) is a point at its own tuned learning
rate (``report.summarize``: chosen on validation AUC at that precision). The
Pareto set is the points no other point beats on both size and AUC; the
iso-AUC compression is the best fp32 plain baseline's bytes over those of the
smallest point of a configuration that keeps its AUC.
"""

import math
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union, cast

from ..files import StrPath
from .pays import se_of_difference
from .plots import pyplot, save
from .report import MIB, Arm, Stats, format_or_dash, read_all, summarize, tuned
from .results_csv import BUCKET_FIELDS, Row
from .serving import PRECISIONS as SERVED, Precision, fields, name as precision_name

PRECISIONS = {"fp32": None, **{precision_name(p): p for p in SERVED}}
Point = Tuple[Arm, Stats]  # an arm and its figures at its tuned lr
# One (data, epochs): its key, its points (smallest first), the reference point (None without an fp32 plain baseline)
Group = Tuple[Tuple[str, int], List[Point], Optional[Point]]
RULE = ("Each point is one configuration (tables, trained plain or with MLET), width d, MLET k and serving "
        "precision, at its learning rate chosen on validation AUC at that precision; test AUC is mean ± sd "
        "(ddof=1) over seeds. Bytes are the embedding tables as served (int8, and onnx_int8: ONNX Runtime "
        "running the export with the same int8 tables and int8 MLPs: a byte per value and a float32 scale and "
        "bias per row; int4: half a byte per value, float16 scale and bias; QR and MD tables: every "
        "sub-table and projection). Pareto: no other point is both no larger and of higher mean AUC. The "
        "reference is the fp32 plain baseline of highest mean test AUC; a point keeps its AUC when its mean is "
        "at least the reference's minus one standard error of the difference, se = sqrt(sd^2/n + sd_ref^2/n_ref) "
        "(one seed each: se = 0). Compression: reference bytes over the point's.")


def served_rows(rows: Sequence[Row]) -> List[Row]:
    """Each sweep row once per precision it was scored at, the precision's figures in the plain columns.

    A diverged run counts as diverged at every precision its configuration was
    scored at, so it keeps its lr out of the choice there too.
    """
    scored: Dict[Tuple[str, ...], Set[str]] = {}  # a configuration (_config) -> the precisions it was scored at
    for r in rows:
        for name, bits in PRECISIONS.items():
            if bits and r.get(fields(bits)[1]) not in ("", None):
                scored.setdefault(_config(r), set()).add(name)
    out = []
    for r in rows:
        out.append({**r, "serving": "fp32"})
        for name in sorted(scored.get(_config(r), ())):
            columns = dict(zip(("val_auc", "test_auc", "test_log_loss", "inference_embedding_bytes"),
                               fields(cast(Precision, PRECISIONS[name]))))  # a scored one: never fp32's None
            if r["status"] != "ok" or r.get(columns["test_auc"]) not in ("", None):
                out.append({**r, **{plain: r.get(q, "") for plain, q in columns.items()},
                            **dict.fromkeys(BUCKET_FIELDS, ""), "serving": name})
    return out


def _config(row):
    return row["dataset"], row["regime"], row["optimizer"], row["tables"], row["epochs"]


def config_name(arm: Arm) -> str:
    """plain, MLET, QR, QR+MLET, MD, MD+MLET (QR/MD with their settings)."""
    tables = "" if arm["tables"] == "plain" else arm["tables"].replace("qr", "QR").replace("md", "MD")
    return (tables + "+MLET" if tables else "MLET") if arm["k"] else (tables or "plain")


def points(arms: Iterable[Arm]) -> List[Group]:
    """Per (data, epochs): the key, the tuned points with a size (smallest first), the reference (or None)."""
    groups: Dict[Tuple[str, int], List[Point]] = {}
    for a in arms:
        if tuned(a) and a["inference_bytes"]:
            groups.setdefault((a["data"], a["epochs"]), []).append((a, cast(Stats, tuned(a))))  # not None: just seen
    out = []
    for key, mine in groups.items():
        base = [(a, s) for a, s in mine if a["k"] == 0 and a["tables"] == "plain" and a["serving"] == "fp32"]
        ref = max(base, key=lambda b: b[1]["auc"], default=None)
        out.append((key, sorted(mine, key=lambda p: (p[0]["inference_bytes"], -p[1]["auc"])), ref))
    return out


def pareto(mine: Iterable[Point]) -> List[Point]:
    """The points (sorted by size) that no other point beats on both size and mean AUC."""
    best, out = -math.inf, []
    for a, s in mine:
        if s["auc"] > best:
            out.append((a, s))
            best = s["auc"]
    return out


def keeps(s: Stats, rs: Stats) -> bool:
    """Whether a point keeps the reference's AUC: mean at least the reference's minus one se of the difference."""
    return s["auc"] - rs["auc"] >= -se_of_difference(s, rs) - 1e-12


def table(key: Tuple[str, int], mine: Sequence[Point], ref: Optional[Point]) -> str:
    front = {id(a) for a, _ in pareto(mine)}
    lines = [f"### {key[0]}, epochs {key[1]}", "",
             "| configuration | serving | d | k | best lr | test AUC (mean ± sd) | seeds | emb MiB | smaller than "
             "reference | AUC - reference ± se | Pareto |", "|" + "---|" * 11]
    for a, s in mine:
        ratio = f"{ref[0]['inference_bytes'] / a['inference_bytes']:.1f}x" if ref else "-"
        gap = f"{s['auc'] - ref[1]['auc']:+.4f} ± {se_of_difference(s, ref[1]):.4f}" if ref else "-"
        lines.append("| " + " | ".join([
            config_name(a), a["serving"], str(a["d"]), str(a["k"]) if a["k"] else "-", f"{a['best']:g}",
            f"{s['auc']:.4f} ± {s['auc_sd']:.4f}", str(s["n"]), format_or_dash(a["inference_bytes"] / MIB, ".4f"), ratio, gap,
            "yes" if id(a) in front else ""]) + " |")
    return "\n".join(lines)


def compression(mine: Sequence[Point], ref: Optional[Point]) -> List[str]:
    """Per (configuration, precision): the smallest point that keeps the reference's AUC, and the smallest overall."""
    if ref is None:
        return ["no fp32 plain baseline to compare against"]
    r, rs = ref
    lines = [f"Reference: plain baseline d={r['d']}, fp32, test AUC {rs['auc']:.4f} ± {rs['auc_sd']:.4f}, "
             f"{r['inference_bytes'] / MIB:.4f} MiB."]
    kept = [(a, s) for a, s in mine if keeps(s, rs)]
    for name in sorted({(config_name(a), a["serving"]) for a, _ in mine}):
        same = [(a, s) for a, s in mine if (config_name(a), a["serving"]) == name]
        hit = next(((a, s) for a, s in same if keeps(s, rs)), None)
        if hit is None:
            a, s = max(same, key=lambda p: p[1]["auc"])
            lines.append(f"{name[0]} {name[1]}: no point keeps the reference's AUC (best: d={a['d']}, "
                         f"AUC {s['auc'] - rs['auc']:+.4f} ± {se_of_difference(s, rs):.4f})")
        else:
            lines.append(f"{name[0]} {name[1]}: {_point(hit, ref)}")
    if kept:
        lines.append(f"Smallest model that keeps the reference's AUC: {config_name(kept[0][0])} "
                     f"{kept[0][0]['serving']}, {_point(kept[0], ref)}")
    return lines


def _point(point, ref):
    (a, s), (r, rs) = point, ref
    k = f" k={a['k']}" if a["k"] else ""
    return (f"d={a['d']}{k}, AUC {s['auc'] - rs['auc']:+.4f} ± {se_of_difference(s, rs):.4f}, "
            f"{r['inference_bytes'] / a['inference_bytes']:.1f}x smaller")


def plot(groups: Sequence[Group], out_png: StrPath, title: Optional[str] = None) -> None:
    plt, matplotlib = pyplot("the frontier's plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 5.2), squeeze=False)
    names = sorted({config_name(a) for _, mine, _ in groups for a, _ in mine})
    markers = dict(zip(PRECISIONS, "os^"))
    for ax, (key, mine, ref) in zip(axes.flat, groups):
        for name in names:
            for serving, marker in markers.items():
                pts = [(a, s) for a, s in mine if config_name(a) == name and a["serving"] == serving]
                if pts:
                    ax.errorbar([a["inference_bytes"] / MIB for a, _ in pts], [s["auc"] for _, s in pts],
                                yerr=[s["auc_sd"] for _, s in pts], ls="none", marker=marker, capsize=2,
                                color=f"C{names.index(name) % 10}", label=f"{name} {serving}")
        front = pareto(mine)
        ax.step([a["inference_bytes"] / MIB for a, _ in front], [s["auc"] for _, s in front], where="post",
                color="black", lw=0.8, label="Pareto set")
        if ref:
            ax.axhline(ref[1]["auc"], color="gray", ls="--", lw=0.8, label="best fp32 plain baseline")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set(xlabel="served embedding size (MiB, log scale)", ylabel="test AUC (tuned lr, mean ± sd)",
               title=f"{title or 'Size against AUC'} ({key[0]}, epochs {key[1]})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save(fig, out_png)


def frontier(csv_paths: Union[StrPath, Iterable[StrPath]], out_png: Optional[StrPath] = None,
             title: Optional[str] = None) -> str:
    """The frontier's markdown (rule, per data: points, Pareto set, compression); the plot to ``out_png``."""
    groups = points(summarize(served_rows(read_all(csv_paths))))
    parts = ["## Size against AUC: every stock-loadable configuration", RULE]
    for key, mine, ref in groups:
        parts += [table(key, mine, ref), "\n".join(f"- {line}" for line in compression(mine, ref))]
    if out_png and groups:
        plot(groups, out_png, title)
    return "\n\n".join(parts)
