"""``dlrm-mlet data``: how often each embedding row of a user's data is trained, and what the map says there.

It reads the processed data DLRM trains from (``data/processed.py``: every
loader's files), counts each row's lookups over the training split
(``data/frequency.py``, on the row the model sees after ``--max-ind-range``),
and prints per table and overall the rows, the rows seen, the share of rows
and of lookups by training count, and the rare-lookup share. Then it places
that share on the map shipped with the package (``tools/map_summary.json``,
written by ``dlrm-mlet report --map-json`` from the committed sweeps) and
prints what was measured in the nearest regimes. The map is synthetic
evidence: the regimes are generated data, so it says where to expect a gain,
not what a user's model will gain.
"""

from typing import Any, Dict, Mapping, Optional

from ..data.frequency import CLASSES, NAME, RARE_MAX, cap_rows, count_rows, profile
from ..data.processed import training_split
from ..files import StrPath
from ..progress import progress_bar
from . import pays


def data_report(path: str, max_ind_range: int = -1, quiet: bool = False,
                map_path: StrPath = pays.SUMMARY) -> Dict[str, Any]:
    """``(profile dict, map entries near it)`` for the processed data at ``path``."""
    split = training_split(path)
    sizes = cap_rows(split.sizes, max_ind_range)
    with progress_bar(split.rows, "count lookups", quiet) as bar:
        counts = count_rows(split.blocks(), sizes, max_ind_range, bar.update)
    info = profile(counts)
    info.update(path=str(path), source=split.source, max_ind_range=max_ind_range)
    entries = pays.load_summary(map_path) or []
    share = info["overall"]["rare_lookup_share"]
    info["map"] = [] if share is None else [
        e for optimizer in sorted({e["optimizer"] for e in entries}, key=lambda o: (o != "sgd", o))
        for e in pays.nearest(entries, share, optimizer)]
    info["sample_warning"] = sample_warning(info)
    info["verdict"] = verdict(info)
    return info


# Lookups on rows seen once, as a share of all: Good-Turing's estimate of how often a further lookup
# would find a value never seen. Above this, counting more of the data would move the share.
UNSEEN_MASS = 0.05


def sample_warning(info: Mapping[str, Any]) -> Optional[str]:
    """A line when the file looks like a small sample of larger data: its share then overstates the full data's."""
    once = info["overall"]["classes"]["1"]["lookups"]
    if once is None or once <= UNSEEN_MASS:
        return None
    return (f"warning: {100 * once:.1f} % of the training lookups land on values seen only once, so more samples "
            f"would keep finding new values (Good-Turing; above {100 * UNSEEN_MASS:.0f} % this is said): if this file "
            "is a sample of a larger data set, the full data's share is lower than this one; count the full data")


def verdict(info: Mapping[str, Any]) -> str:
    """The first line: what the evidence says for this data, with its uncertainty, and which evidence."""
    share = info["overall"]["rare_lookup_share"]
    if share is None:
        return "verdict: none: the training split has no lookups"
    near = sorted((e for e in info["map"] if e["optimizer"] == "sgd"), key=lambda e: abs(e["rare_lookup_share"] - share))
    how = f"dlrm-mlet advise {info['path']} --minutes 60"
    if not near:
        return f"verdict: not measured near here (no map installed); measure it on this data: {how}"
    e = near[0]
    pays_there = bool(e["saving"] and e["saving"] > 1)
    return (f"verdict: the share alone cannot decide it; the nearest measured regime ({e['regime'] or e['data']}, "
            f"synthetic, share {e['rare_lookup_share']:.3f} against {share:.3f} here) "
            + (f"had a tuned size saving of {e['saving']:.0f}x" if pays_there else "had no tuned size saving")
            + f", but data built otherwise went against the map; measure it on this data: {how}")


def _pct(share):
    return "-" if share is None else f"{100 * share:.1f}"


def format_data_report(info: Mapping[str, Any]) -> str:
    labels = [label for label, *_ in CLASSES]
    head = (f"{'table':>5} {'rows':>11} {'seen':>11} | % of rows: " + " ".join(f"{lb:>6}" for lb in labels)
            + " | % of lookups: " + " ".join(f"{lb:>6}" for lb in labels[1:]) + f" | {NAME}")
    lines = [f"{info['path']}: {info['source']}"
             + (f", indices modulo {info['max_ind_range']}" if info["max_ind_range"] > 0 else ""), "", head]
    entries = [(str(i), t) for i, t in enumerate(info["tables"])] + [("all", info["overall"])]
    for name, t in entries:
        lines.append(f"{name:>5} {t['rows']:>11} {t['seen']:>11} |            "
                     + " ".join(f"{_pct(t['classes'][lb]['rows']):>6}" for lb in labels) + " |               "
                     + " ".join(f"{_pct(t['classes'][lb]['lookups']):>6}" for lb in labels[1:])
                     + f" | {_pct(t['rare_lookup_share']):>5} %")
    share = info["overall"]["rare_lookup_share"]
    lines = [info["verdict"]] + ([info["sample_warning"]] if info["sample_warning"] else []) + [""] + lines
    lines += ["", f"{NAME}: {_pct(share)} % of {info['overall']['lookups']} training lookups land on an embedding "
                  f"row seen at most {RARE_MAX} times in training."]
    if info["map"]:
        lines += ["", "Where this falls on the map (synthetic evidence: generated data, tuned sweeps; "
                      "see docs/results/map.md in the project):"]
        lines += [f"  {pays.describe(e)}" for e in info["map"]]
    elif share is not None:
        lines += ["", "No map is installed with this copy of dlrm-mlet: see docs/results/map.md in the project."]
    return "\n".join(lines)
