"""``dlrm-mlet report``: a sweep's CSV as the tables, plot and size savings a paper needs.

Every figure is per (dataset, epochs): 1-epoch and 3-epoch runs are different experiments.
Each model's learning rate is chosen on the validation split, and only that lr's test
metrics are reported, so the test split never picks a hyper-parameter. A diverged run is
never averaged in: it makes its lr ineligible. The figures at one fixed lr sit beside the
tuned ones, so a reader sees how much of a gap is tuning.
"""

import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from ..data.frequency import BUCKET_RULE, BUCKETS
from ..errors import MLETError
from ..files import StrPath
from . import pays
from .plots import pyplot, save
from .results_csv import BUCKET_FIELDS, FIELDS, Row, read_rows

Arm = Dict[str, Any]  # a (data, epochs, d, k) of summarize: its "lrs", the "best" lr, "tuned" and "single" figures
Stats = Dict[str, float]  # an arm's figures at one lr: "auc" (test, mean), "auc_sd" over "n" seeds, "loss", "val_auc"
MIB = 2**20
NUMBERS = [f for f in FIELDS if f not in ("dataset", "regime", "optimizer", "tables", "d", "k", "seed", "epochs",
                                          "status", "note")]
LR_RULE = ("Each (dataset, epochs, d, k) is reported at its best lr: among the lrs where no seed diverged, the one "
           "with the highest mean validation AUC. The figures are that lr's test metrics, mean ± sd (ddof=1) over "
           "seeds; diverged runs are never averaged in. (edge): the chosen lr is the smallest or largest tried, so the "
           "optimum may lie outside the grid.")
ISO_RULE = ("Rule: (a) each baseline width d_b is compared against its reference, the best baseline (highest mean "
            "test AUC) among widths <= d_b, so a wider baseline that is worse than a narrower one earns no extra "
            "credit; (b) an MLET model (any k) matches the reference when its mean test AUC exceeds the reference's "
            "by at least one standard error of the difference, se = sqrt(sd_m^2/n_m + sd_b^2/n_b) over seeds (one "
            "seed per arm: se = 0, i.e. >=); (c) the saving is the reference's inference embedding bytes over those "
            "of the smallest matching MLET model (ties on size: highest AUC). At the single lr, a model with a "
            "diverged seed there is left out.")


def _num(value):
    return math.nan if value in ("", None) else float(value)


def _mean_sd(values):
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _stats(runs):
    col = lambda field: [_num(r[field]) for r in runs]  # noqa: E731
    auc, auc_sd, n = _mean_sd(col("test_auc"))
    loss, loss_sd, _ = _mean_sd(col("test_log_loss"))
    stats = {"auc": auc, "auc_sd": auc_sd, "n": n, "loss": loss, "loss_sd": loss_sd,
             "val_auc": _mean_sd(col("val_auc"))[0], "ms_per_it": _mean_sd(col("train_ms_per_it"))[0]}
    stats.update({f[len("test_"):]: _mean_sd(col(f))[0] for f in BUCKET_FIELDS})
    return stats


def _bytes(runs, field):
    return next((int(r[field]) for r in runs if r[field] not in ("", None)), None)


def data_label(dataset: str, regime: str = "", optimizer: str = "sgd") -> str:
    """How a group of runs is named in every table: its regime (else its dataset), and a non-SGD optimizer."""
    return (regime or dataset) + ("" if optimizer in ("", "sgd") else f" ({optimizer})")


def config_label(tables: str = "plain", serving: str = "fp32") -> str:
    """What a group's models are beyond its data: QR/MD tables, a quantized serving precision ('' if neither)."""
    return "".join(f" [{part}]" for part in (tables, serving) if part not in ("plain", "fp32"))


def read_all(csv_paths: Union[StrPath, Iterable[StrPath]]) -> List[Row]:
    """The rows of one sweep CSV or several, checked readable (numbers where numbers belong)."""
    csv_paths = [csv_paths] if isinstance(csv_paths, (str, os.PathLike)) else list(csv_paths)
    rows = []
    for path in csv_paths:
        if not os.path.isfile(path):
            raise MLETError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: is a folder, not a CSV")
        more = read_rows(path)
        if not more:
            raise MLETError(f"{path}: no sweep results")
        try:
            for r in more:
                int(r["d"]), int(r["k"]), int(r["epochs"]), int(r["seed"])
                [_num(r[field]) for field in NUMBERS]
        except ValueError as error:
            raise MLETError(f"{path}: not a readable sweep results file ({error})") from None
        rows += more
    return rows


def summarize(rows: Iterable[Row], single_lr: float = 0.1) -> List[Arm]:
    """One arm per (data, epochs, d, k): every lr's seeds, the lr chosen on validation, the single lr.

    The data is (dataset, regime, optimizer), and the tables' QR/MD settings and
    the serving precision (a ``serving`` key, which ``frontier.py``'s rows carry)
    make their own groups. Sorted by data, epochs, then baselines before MLET, MLET by k, each by d.
    """
    groups: Dict[Tuple[str, int, int, int], Dict[float, List[Row]]] = {}  # (data, epochs, d, k) -> lr -> runs
    for r in rows:
        data = data_label(r["dataset"], r["regime"], r["optimizer"])
        key = (data + config_label(r["tables"], r.get("serving", "fp32")), int(r["epochs"]), int(r["d"]), int(r["k"]))
        groups.setdefault(key, {}).setdefault(float(r["lr"]), []).append(r)
    arms = []
    order = lambda g: (g[0][0], g[0][1], g[0][3] > 0, g[0][3], g[0][2])  # noqa: E731
    for (data, epochs, d, k), by_lr in sorted(groups.items(), key=order):
        lrs: Dict[float, Dict[str, Any]] = {}  # lr -> its "runs", "diverged" count and "stats"
        for lr, runs in sorted(by_lr.items()):
            runs.sort(key=lambda r: int(r["seed"]))
            diverged = sum(r["status"] != "ok" for r in runs)
            lrs[lr] = {"runs": runs, "diverged": diverged, "stats": None if diverged else _stats(runs)}
        eligible = [lr for lr, e in lrs.items() if e["stats"] and not math.isnan(e["stats"]["val_auc"])]
        best = max(eligible, key=lambda lr: lrs[lr]["stats"]["val_auc"], default=None)
        every = [r for e in lrs.values() for r in e["runs"]]
        arms.append({
            "dataset": data, "epochs": epochs, "d": d, "k": k, "lrs": lrs, "best": best,
            "regime": every[0]["regime"], "optimizer": every[0]["optimizer"], "tables": every[0]["tables"],
            "serving": every[0].get("serving", "fp32"),
            "data": data_label(every[0]["dataset"], every[0]["regime"], every[0]["optimizer"]),
            "rare_lookup_share": _mean_sd(_num(r["rare_lookup_share"]) for r in every)[0],
            "tuned": lrs[best]["stats"] if best is not None else None,
            "why_none": "all lrs diverged" if all(e["diverged"] for e in lrs.values()) else "no validation AUC",
            "single": next((e for lr, e in lrs.items() if math.isclose(lr, single_lr)), None),
            "inference_bytes": _bytes(every, "inference_embedding_bytes"),
            "training_bytes": _bytes(every, "training_embedding_bytes"),
        })
    return arms


def tuned(arm: Arm) -> Optional[Stats]:
    s = arm["tuned"]
    return s if s and not math.isnan(s["auc"]) else None


def at_single_lr(arm: Arm) -> Optional[Stats]:
    s = arm["single"] and arm["single"]["stats"]
    return s if s and not math.isnan(s["auc"]) else None


def _groups(arms):
    out = {}
    for a in arms:
        out.setdefault((a["dataset"], a["epochs"]), []).append(a)
    return list(out.items())


def format_or_dash(x: Optional[float], spec: str = ".4f") -> str:
    """A figure for a table cell; "-" where there is none."""
    return "-" if x is None or math.isnan(x) else format(x, spec)


def _pm(mean, sd):
    return "-" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}"


def _mib(n):
    return "-" if n is None else f"{n / MIB:.3f}"


def _model(arm):
    return ("MLET", str(arm["k"])) if arm["k"] else ("baseline", "-")


def tuned_table(arms: Iterable[Arm], single_lr: float, oracle: Optional[Mapping[str, float]] = None) -> str:
    lines = [f"| dataset | epochs | model | d | k | best lr | val AUC (mean) | test AUC (mean ± sd) | test log loss "
             f"(mean ± sd) | test AUC at lr {single_lr:g} | seeds | inference emb MiB | training emb MiB | "
             "train ms/it |", "|" + "---|" * 14]
    for a in arms:
        e, s = a["single"], a["tuned"]
        single = "-" if e is None else (f"diverged ({e['diverged']}/{len(e['runs'])})" if e["diverged"]
                                        else _pm(e["stats"]["auc"], e["stats"]["auc_sd"]))
        cells = ([a["why_none"], "-", "-", "-", single, "-", "-"] if s is None else
                 [f"{a['best']:g}" + _edge_mark(a), format_or_dash(s["val_auc"]), _pm(s["auc"], s["auc_sd"]), _pm(s["loss"], s["loss_sd"]),
                  single, str(len(a["lrs"][a["best"]]["runs"])), format_or_dash(s["ms_per_it"], ".2f")])
        model, k = _model(a)
        lines.append("| " + " | ".join([a["dataset"], str(a["epochs"]), model, str(a["d"]), k, *cells[:-1],
                                        _mib(a["inference_bytes"]), _mib(a["training_bytes"]), cells[-1]]) + " |")
    if oracle:
        lines.append(f"\nOracle (true click probabilities): AUC {oracle['oracle_auc']:.4f}, "
                     f"log loss {oracle['oracle_log_loss']:.4f}")
    return "\n".join(lines)


def _edge_mark(arm):
    """" (edge)" when the chosen lr is the smallest or largest of two or more tried: the optimum may lie
    outside the grid (with two lrs it always may)."""
    tried = sorted(arm["lrs"])
    return " (edge)" if len(tried) >= 2 and arm["best"] in (tried[0], tried[-1]) else ""


def _who(m, ms, gap, se):
    return (f"MLET d={m['d']} k={m['k']} (AUC {ms['auc']:.4f}, {_mib(m['inference_bytes'])} MiB; "
            f"gap {gap:+.4f}, se {se:.4f})")


def iso_auc(arms: Iterable[Arm], pick: Callable[[Arm], Optional[Stats]]) -> str:
    """Per baseline width d_b, the smallest MLET model that matches the baseline frontier.

    The reference of d_b is the best baseline of width <= d_b (a worse, wider baseline earns no
    credit); an MLET model matches when its mean test AUC leads the reference's by at least
    se = sqrt(sd_m^2/n_m + sd_b^2/n_b), so seed noise is not counted as a win; the saving is
    reference bytes / bytes of the smallest match (ties: highest AUC). ``pick(arm)`` gives the
    figures compared (``tuned`` or ``at_single_lr``), None for an arm left out.
    """
    lines = []
    for (dataset, epochs), group in _groups(arms):
        where = f"{dataset}, epochs {epochs}"
        ok = [(a, cast(Stats, pick(a))) for a in group if pick(a) and a["inference_bytes"]]  # None left out
        base = sorted(((a, s) for a, s in ok if a["k"] == 0), key=lambda b: b[0]["d"])
        mlet = [(a, s) for a, s in ok if a["k"]]
        if not base:
            lines.append(f"{where}: {_no_baseline(group, pick)}")
        bs: Optional[Stats]  # a baseline's figures; below, None for a d without a baseline
        ref = None
        for b, bs in base:
            if ref is None or bs["auc"] > ref[1]["auc"]:
                ref = (b, bs)
            r, rs = ref
            head = (f"{where}: baseline d={b['d']}: reference baseline d={r['d']} (AUC {rs['auc']:.4f}, "
                    f"{_mib(r['inference_bytes'])} MiB)")
            scored = [(m, ms, ms["auc"] - rs["auc"], pays.se_of_difference(ms, rs)) for m, ms in mlet]
            match = [x for x in scored if x[2] >= x[3] - 1e-12]  # the tolerance: float means of equal AUCs
            if not match:
                close = max(scored, key=lambda x: x[1]["auc"], default=None)
                closest = f" (closest: {_who(*close)})" if close else ""
                lines.append(f"{head}: no MLET model tried matches it{closest}")
                continue
            m, ms, gap, se = min(match, key=lambda x: (x[0]["inference_bytes"], -x[1]["auc"]))
            ratio = r["inference_bytes"] / m["inference_bytes"]
            saving = f"{ratio:.1f}x smaller" if ratio > 1 else (
                "same size: no saving" if ratio == 1 else f"{1 / ratio:.1f}x larger: no saving")
            lines.append(f"{head}: matched by {_who(m, ms, gap, se)}: {saving}")
        for d in sorted({a["d"] for a, _ in mlet}):
            bs = next((s for b, s in base if b["d"] == d), None)
            m, ms = max(((a, s) for a, s in mlet if a["d"] == d), key=lambda m: m[1]["auc"])
            if bs is not None and ms["auc"] <= bs["auc"]:
                lines.append(f"{where}: at d={d} no k beats the baseline (best MLET AUC {ms['auc']:.4f} "
                             f"with k={m['k']}, baseline {bs['auc']:.4f})")
    return "\n".join(f"- {line}" for line in lines)


def _no_baseline(group, pick):
    """Why a group has no baseline to compare against, in the reader's terms."""
    baselines = [a for a in group if a["k"] == 0]
    if not baselines:
        return "no baseline in this data to compare against"
    if pick is at_single_lr:
        if all(a["single"] is None for a in baselines):
            return "no baseline was run at the single lr (it is not in their grid)"
        return "every baseline run at the single lr has a diverged seed"
    return "no baseline has a learning rate at which no seed diverged"


def lr_tables(arms: Iterable[Arm]) -> str:
    """Mean validation AUC per lr, the chosen one in bold: the tuning record and the divergence map."""
    out = []
    for (dataset, epochs), group in _groups(arms):
        lrs = sorted({lr for a in group for lr in a["lrs"]})
        lines = [f"### {dataset}, epochs {epochs}", "",
                 "| model | d | k | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|" + "---|" * (3 + len(lrs))]
        diverged = []
        for a in group:
            cells = []
            for lr in lrs:
                e = a["lrs"].get(lr)
                if e is None:
                    cells.append("-")
                elif e["diverged"]:
                    cells.append(f"div {e['diverged']}/{len(e['runs'])}")
                    diverged += [f"- d={a['d']} k={a['k']} lr={lr:g} seed={r['seed']}: {r['note'] or 'no note'}"
                                 for r in e["runs"] if r["status"] != "ok"]
                else:
                    v = format_or_dash(e["stats"]["val_auc"])
                    cells.append(f"**{v}**" if lr == a["best"] else v)
            lines.append("| " + " | ".join([_model(a)[0], str(a["d"]), _model(a)[1], *cells]) + " |")
        lines += ["", "Diverged runs:" + ("\n" + "\n".join(diverged) if diverged else " none")]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def rare_items(arms: Sequence[Arm]) -> str:
    """Test metrics per training-frequency bucket, at each model's best lr, against the baseline of its d."""
    if not any(r[f] not in ("", None) for a in arms for e in a["lrs"].values() for r in e["runs"]
               for f in BUCKET_FIELDS):
        return "no rare-item buckets in this CSV"
    out = [f"Buckets: {BUCKET_RULE}; mean over seeds at the best lr; AUC vs baseline = MLET minus the "
           "baseline of the same d."]
    for (dataset, epochs), group in _groups(arms):
        lines = [f"### {dataset}, epochs {epochs}", "",
                 "| model | d | k | lr | bucket | samples | test AUC | test log loss | AUC vs baseline |",
                 "|" + "---|" * 9]
        for d in sorted({a["d"] for a in group if a["k"] == 0}):
            same = sorted((a for a in group if a["d"] == d and a["tuned"]), key=lambda a: a["k"])
            base = next((a["tuned"] for a in same if a["k"] == 0), None)
            for a in same:
                s = a["tuned"]
                for slug, label, *_ in BUCKETS:
                    n, auc = s[f"{slug}_samples"], s[f"{slug}_auc"]
                    delta = "-" if a["k"] == 0 or base is None else format_or_dash(auc - base[f"{slug}_auc"], "+.4f")
                    lines.append("| " + " | ".join([
                        _model(a)[0], str(d), _model(a)[1], f"{a['best']:g}", label,
                        format_or_dash(n, ".0f" if n == round(n) else ".1f") if not math.isnan(n) else "-",
                        format_or_dash(auc), format_or_dash(s[f"{slug}_log_loss"]), delta]) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot(arms: Sequence[Arm], out_png: StrPath, single_lr: float, oracle: Optional[Mapping[str, float]] = None,
         title: Optional[str] = None) -> None:
    plt, matplotlib = pyplot("the report's plot")
    groups = _groups(arms)
    columns = min(len(groups), 3)
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    every_k = sorted({a["k"] for a in arms})  # one colour per k in every panel
    for ax, ((dataset, epochs), group) in zip(axes.flat, groups):
        ks = sorted({a["k"] for a in group})
        for k in ks:
            colour, name = ("black", "baseline") if k == 0 else (f"C{every_k.index(k)}", f"MLET k={k}")
            line = sorted((a for a in group if a["k"] == k and a["inference_bytes"]),
                          key=lambda a: a["inference_bytes"])
            pts = [(a, cast(Stats, tuned(a))) for a in line if tuned(a)]  # None left out
            if pts:
                ax.errorbar([a["inference_bytes"] / MIB for a, _ in pts], [s["auc"] for _, s in pts],
                            yerr=[s["auc_sd"] for _, s in pts], marker="o" if k else "s", capsize=3,
                            lw=2.5 if k == 0 else 1.5, color=colour, label=f"{name} (tuned lr)")
            for a, s in pts if k == ks[0] else ():  # label each d once
                ax.annotate(f"d={a['d']}", (a["inference_bytes"] / MIB, s["auc"]), fontsize=7,
                            textcoords="offset points", xytext=(-8, -14))
            one = [(a, cast(Stats, at_single_lr(a))) for a in line if at_single_lr(a)]
            if one:
                ax.plot([a["inference_bytes"] / MIB for a, _ in one], [s["auc"] for _, s in one], ls="--",
                        lw=0.8, marker=".", color=colour, label=f"{name} (lr {single_lr:g})")
        if oracle:
            ax.axhline(oracle["oracle_auc"], color="gray", ls="--", lw=1, label="oracle AUC")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        where = f"{dataset}, epochs {epochs}"
        ax.set(xlabel="inference embedding size (MiB, log scale)", ylabel="test AUC",
               title=(f"{title} ({where})" if len(groups) > 1 else title) if title else f"{where}: AUC vs size")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # tuned curves first: matplotlib lists error bars after plain lines
            order = sorted(range(len(labels)), key=lambda i: f"(lr {single_lr:g})" in labels[i])
            ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)
    fig.tight_layout()
    save(fig, out_png)


def _oracle(path):
    try:
        with open(path) as handle:
            oracle = json.load(handle)
        return {key: float(oracle[key]) for key in ("oracle_auc", "oracle_log_loss")}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MLETError(f"{path}: not a synthetic dataset's oracle JSON ({type(error).__name__}: {error})") from None


def report(csv_paths: Union[StrPath, Iterable[StrPath]], out_png: Optional[StrPath] = None,
           oracle_path: Optional[StrPath] = None, title: Optional[str] = None,
           progress: Optional[Callable[[], object]] = None, single_lr: float = 0.1,
           map_png: Optional[StrPath] = None, map_json: Optional[StrPath] = None) -> str:
    """The markdown (tuned table, iso-AUC at tuned and single lr, where MLET pays, lr table, rare items).

    ``csv_paths``: one sweep CSV or several (their rows together). Writes the
    AUC-vs-size plot to ``out_png``, the saving-vs-rare-lookup-share plot to
    ``map_png`` and the map's JSON (what ``dlrm-mlet data`` reads) to
    ``map_json``, each when given. ``progress()`` is called after each of the three stages (read, summarise, plot).
    """
    progress = progress or (lambda: None)
    rows = read_all(csv_paths)
    oracle = _oracle(oracle_path) if oracle_path else None
    progress()
    arms = summarize(rows, single_lr)
    regimes = pays.summarize_regimes(arms, tuned)
    text = "\n\n".join([
        "## Test metrics at the learning rate chosen on validation", LR_RULE, tuned_table(arms, single_lr, oracle),
        "## Iso-AUC size reduction", ISO_RULE,
        "### At each model's tuned lr", iso_auc(arms, tuned),
        f"### At the single lr {single_lr:g} (no tuning)", iso_auc(arms, at_single_lr),
        *(["## Where MLET pays, by rare-lookup share", pays.RULE, pays.table(regimes)] if regimes else []),
        "## Validation AUC per learning rate (bold: chosen; div i/n: i of n seeds diverged)", lr_tables(arms),
        "## Rare items: test metrics by training frequency", rare_items(arms),
    ])
    progress()
    if out_png:
        plot(arms, out_png, single_lr, oracle, title)
    if map_png and regimes:
        pays.plot(regimes, map_png)
    if map_json:
        pays.write_summary(regimes, map_json)
    progress()
    return text
