"""Where MLET pays: a sweep's arms per data regime, against the regime's rare-lookup share.

A regime is one group of a sweep CSV (its ``regime``, else its dataset, and
its optimizer) at one epoch count. For each, at the tuned learning rates
(``report.tuned``): the **saving** (the best baseline's inference bytes over
those of the smallest MLET model that matches it by the report's one-standard-
error rule; None when no MLET model matches) and the **gain at equal d** (per
d, the best MLET arm's mean test AUC minus the baseline's of the same d, with
the standard error of the difference). ``dlrm-mlet report`` prints them as a
table and plots them against the rare-lookup share; ``dlrm-mlet data`` reads
the JSON form to say what was measured near a user's data.
"""

import json
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, cast

from ..data.frequency import NAME
from ..errors import MLETError
from ..files import StrPath, atomic_write_text
from .plots import pyplot, save

if TYPE_CHECKING:  # report.py imports this module
    from .report import Arm, Stats

RULE = ("Per regime (one dataset and optimizer), at each model's tuned lr: the saving is the best baseline's "
        "inference embedding bytes over those of the smallest MLET model whose mean test AUC leads the best "
        "baseline's by at least one standard error of the difference (the iso-AUC rule above, against the best "
        "baseline of any width); the narrowest MLET width (its best k) is also set against the best baseline, gap "
        "± se and how many times smaller it is, so a near miss shows; the gain at equal d is the best MLET arm of "
        "that d minus the baseline of that d, ± the standard error of the difference over seeds.")
SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "map_summary.json")  # shipped with the package
# One regime of the map (``summarize_regimes``, the JSON summary's "regimes"): its labels and rare-lookup share,
# "best_baseline", "match" and "saving" (None without a match), "widths" (each MLET width against the best
# baseline), "narrowest" (the first of them) and the "gains" at equal d
Regime = Dict[str, Any]


def se_of_difference(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """The standard error of the difference of two arms' mean test AUCs over their seeds: the rule's yardstick."""
    return math.sqrt(a["auc_sd"] ** 2 / a["n"] + b["auc_sd"] ** 2 / b["n"])


def summarize_regimes(arms: Iterable["Arm"], tuned: Callable[["Arm"], Optional["Stats"]]) -> List[Regime]:
    """One entry per (data, epochs) group that has a rare-lookup share and a baseline, sorted by the share."""
    groups: Dict[Tuple[str, int], List["Arm"]] = {}
    for a in arms:
        groups.setdefault((a["dataset"], a["epochs"]), []).append(a)
    out = []
    for (data, epochs), group in groups.items():
        share = group[0]["rare_lookup_share"]
        scored = [(a, cast("Stats", tuned(a))) for a in group if tuned(a) and a["inference_bytes"]]  # None left out
        base = [(a, s) for a, s in scored if a["k"] == 0]
        if math.isnan(share) or not base:
            continue
        ref, rs = max(base, key=lambda b: b[1]["auc"])
        matches = [(a, s) for a, s in scored if a["k"] and s["auc"] - rs["auc"] >= se_of_difference(s, rs) - 1e-12]
        match = min(matches, key=lambda m: (m[0]["inference_bytes"], -m[1]["auc"]), default=None)
        widths = []  # each MLET width, its best k, against the best baseline of any width; narrowest first
        for d in sorted({a["d"] for a, _ in scored if a["k"]}):
            m, ms = max(((a, s) for a, s in scored if a["k"] and a["d"] == d), key=lambda m: m[1]["auc"])
            widths.append({"d": d, "k": m["k"], "gap": ms["auc"] - rs["auc"], "se": se_of_difference(ms, rs),
                           "smaller": ref["inference_bytes"] / m["inference_bytes"]})
        gains = []
        for b, bs in sorted(base, key=lambda b: b[0]["d"]):
            same = [(a, s) for a, s in scored if a["k"] and a["d"] == b["d"]]
            if same:
                m, ms = max(same, key=lambda m: m[1]["auc"])
                gains.append({"d": b["d"], "k": m["k"], "gain": ms["auc"] - bs["auc"], "se": se_of_difference(ms, bs),
                              "seeds": min(ms["n"], bs["n"])})
        out.append({
            "data": data, "regime": group[0]["regime"], "optimizer": group[0]["optimizer"] or "sgd",
            "epochs": epochs, "rare_lookup_share": share,
            "best_baseline": {"d": ref["d"], "auc": rs["auc"], "sd": rs["auc_sd"], "bytes": ref["inference_bytes"]},
            "match": None if match is None else {"d": match[0]["d"], "k": match[0]["k"], "auc": match[1]["auc"],
                                                 "sd": match[1]["auc_sd"], "bytes": match[0]["inference_bytes"]},
            "saving": None if match is None else ref["inference_bytes"] / match[0]["inference_bytes"],
            "narrowest": widths[0] if widths else None, "widths": widths, "gains": gains,
        })
    return sorted(out, key=lambda r: (r["optimizer"] != "sgd", r["optimizer"], r["rare_lookup_share"]))


def _saving(entry):
    s = entry["saving"]
    if s is None:
        return "none (no MLET model matched the best baseline)"
    m = entry["match"]
    return f"{s:.1f}x (MLET d={m['d']} k={m['k']})" if s > 1 else f"none (best match: MLET d={m['d']} k={m['k']})"


def _narrowest(entry):
    """The narrowest MLET model's gap to the best baseline; its size ratio only when that gap is a match
    (at least one standard error ahead), so a ratio never stands beside a model that did not match."""
    n = entry.get("narrowest")
    if n is None:
        return "-"
    matched = n["gap"] >= n["se"] - 1e-12
    return (f"d={n['d']} k={n['k']}: {n['gap']:+.4f} ± {n['se']:.4f}"
            + (f", a match {n['smaller']:.0f}x smaller" if matched else ", no match"))


def _gains(entry):
    return ", ".join(f"d={g['d']}: {g['gain']:+.4f} ± {g['se']:.4f} (k={g['k']})" for g in entry["gains"]) or "-"


def table(entries: Sequence[Regime]) -> str:
    """The markdown table of ``summarize_regimes``: one row per regime and optimizer."""
    if not entries:
        return f"no group with a {NAME} column and a baseline in this CSV"
    lines = [f"| data | optimizer | {NAME} | best baseline (test AUC) | tuned iso-AUC saving | "
             "narrowest MLET - best baseline ± se (size) | AUC gain at equal d, MLET - baseline ± se (best k) |",
             "|" + "---|" * 7]
    for e in entries:
        b = e["best_baseline"]
        lines.append(f"| {e['regime'] or e['data']} | {e['optimizer']} | {e['rare_lookup_share']:.3f} | "
                     f"d={b['d']} ({b['auc']:.4f} ± {b['sd']:.4f}) | {_saving(e)} | {_narrowest(e)} | {_gains(e)} |")
    return "\n".join(lines)


def plot(entries: Sequence[Regime], out_png: StrPath, title: Optional[str] = None) -> None:
    """The narrowest MLET model against the best baseline, and the gain at equal d, against the rare-lookup
    share; one line per optimizer (a regime's saving, when there is one, written beside its point)."""
    plt, _ = pyplot("the map's plot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    optimizers = sorted({e["optimizer"] for e in entries}, key=lambda o: (o != "sgd", o))
    for i, optimizer in enumerate(optimizers):
        mine = [e for e in entries if e["optimizer"] == optimizer]
        pts = [e for e in mine if e.get("narrowest")]
        x = [e["rare_lookup_share"] for e in pts]
        y = [e["narrowest"]["gap"] for e in pts]
        left.errorbar(x, y, yerr=[e["narrowest"]["se"] for e in pts], marker="o", capsize=3, color=f"C{i}",
                      label=f"{optimizer}: MLET d={pts[0]['narrowest']['d'] if pts else '-'}")
        for e, xi, yi in zip(pts, x, y):
            saving = f", {e['saving']:.0f}x" if e["saving"] and e["saving"] > 1 else ""
            left.annotate((e["regime"] or e["data"]) + saving, (xi, yi), fontsize=7, textcoords="offset points",
                          xytext=(3, 4))
        for j, d in enumerate(sorted({g["d"] for e in mine for g in e["gains"]})):
            gains = [(e["rare_lookup_share"], g) for e in mine for g in e["gains"] if g["d"] == d]
            right.errorbar([p[0] for p in gains], [p[1]["gain"] for p in gains], yerr=[p[1]["se"] for p in gains],
                           marker="os^"[j % 3], capsize=3, ls="-" if optimizer == "sgd" else "--",
                           color=f"C{i}", alpha=1 - 0.25 * j, label=f"{optimizer}, d={d}")
    left.axhline(0, color="gray", lw=0.8)
    left.set(xlabel=NAME, ylabel="test AUC, narrowest MLET - best baseline (± se)",
             title=title or "Where MLET pays: the narrowest MLET model against the best baseline")
    right.axhline(0, color="gray", lw=0.8)
    right.set(xlabel=NAME, ylabel="test AUC, MLET - baseline of the same d (± se)", title="Gain at equal d")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, out_png)


def write_summary(entries: Sequence[Regime], path: StrPath = SUMMARY) -> None:
    atomic_write_text(path, json.dumps({"statistic": NAME, "regimes": entries}, indent=1) + "\n")


def load_summary(path: StrPath = SUMMARY) -> Optional[List[Regime]]:
    """The map shipped with the package (or ``path``); None when there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            return json.load(handle)["regimes"]
    except (OSError, ValueError, KeyError) as error:
        raise MLETError(f"{path}: not a map summary ({error})") from None


def nearest(entries: Iterable[Regime], share: float, optimizer: str = "sgd") -> List[Regime]:
    """The measured regimes of ``optimizer`` on either side of ``share`` (one when it is outside them)."""
    mine = sorted((e for e in entries if e["optimizer"] == optimizer), key=lambda e: e["rare_lookup_share"])
    below = [e for e in mine if e["rare_lookup_share"] <= share]
    above = [e for e in mine if e["rare_lookup_share"] > share]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def describe(entry: Regime) -> str:
    """One line of what the map measured in a regime."""
    return (f"{entry['regime'] or entry['data']} ({NAME} {entry['rare_lookup_share']:.3f}, {entry['optimizer']}): "
            f"tuned iso-AUC saving: {_saving(entry)}; the narrowest MLET model against the best baseline: "
            f"{_narrowest(entry)}; AUC gain at equal d: {_gains(entry)}")
