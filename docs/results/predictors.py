"""How often each predictor of "does MLET pay?" was right: the map's share-based line, and ``advise``'s pilot.

    python docs/results/predictors.py DATA_DIR [--phase truth|pilots|report|all] [--jobs 2]

Held-out regimes, built otherwise than the map's (``map.py``: rank-32 latent
model, 200,000-300,000 samples), each written as DLRM's processed file
(``dlrm-mlet synth --processed``):

* ``rank8-400k``: a rank-8 latent model (a planted truth d=4 can nearly hold),
  400,000 samples, tables at 1/100 of Criteo-Kaggle's, Zipf 1.0;
* ``rank64-150k``: rank 64 (more structure than d=16 holds), 150,000 samples,
  tables at 1/250, Zipf 1.2.

For each, the **truth** is a tuned sweep as the map's (``tools/tuning.py``:
baseline d 4, 16, 64, MLET k=64 at d 4 and 16, seeds 0 and 1 and 2 where
close), in ``predictors.csv``; the **map's line** is what ``dlrm-mlet data``
prints for it (the nearest regime's tuned saving and gain); the **pilot** is
``dlrm-mlet advise`` on 10 % of its samples with 20 minutes. The full-size law
(``full_size.py``) is a third case: its truth is the 100 % result, its pilots
``advise`` on 1 % of the full file (20 minutes, then the 45 a 20-minute pilot
asked for) and on 10 % (180 minutes: at one run at a time, the time two seeds of
its 15 first runs take there), and the tuned 1 % and 10 % curves; the 10 %
pilot's answers are the ones scored.

Each predictor answers two questions, scored against the truth: does a
narrower MLET model match the best baseline (a saving: yes or no), and is the
gain at equal d=16 positive by two standard errors (yes or no). ``advise``
may answer "undecided" (one seed): counted as not right. Writes
``predictors.md``.
"""

import argparse
import json
import os
import sys

from dlrm_mlet.data.kaggle import KAGGLE_PROCESSED
from dlrm_mlet.dlrm.script import default_dlrm_dir
from dlrm_mlet.tools import pays
from dlrm_mlet.tools.advise import advise
from dlrm_mlet.tools.data_report import data_report
from dlrm_mlet.tools.report import summarize, tuned
from dlrm_mlet.tools.results_csv import read_rows
from dlrm_mlet.tools.sweep import run_sweep
from dlrm_mlet.tools.synth_processed import write_processed
from dlrm_mlet.tools.tuning import first_grid, tune
from full_size_report import tuned_arm

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "predictors.csv")
PILOTS = os.path.join(HERE, "predictors_pilots.json")
HELD_OUT = {  # name: (samples, table scale, rank, Zipf)
    "rank8-400k": (400_000, 0.01, 8, 1.0),
    "rank64-150k": (150_000, 0.004, 64, 1.2),
}
PLAN = [(4, 0), (16, 0), (64, 0), (4, 64), (16, 64)]
PILOT_MINUTES, PILOT_SHARE = 20, 0.10
FULL_LAW_PILOTS = {  # name: (samples, minutes)
    "full law, 1% pilot": (458_406, 20),
    "full law, 1% pilot, 45 min": (458_406, 45),
    "full law, 10% pilot": (4_584_062, 180),
}
SCORED_PILOT = "full law, 10% pilot"  # the full law's pilot counted in "how often right"
D = 16


def data(data_dir, name):
    samples, scale, rank, zipf = HELD_OUT[name]
    folder = os.path.join(data_dir, name)
    if not os.path.exists(os.path.join(folder, KAGGLE_PROCESSED)):
        write_processed(folder, samples, seed=5, scale=scale, rank=rank, zipf=zipf, support="published",
                        progress=False)
    return os.path.join(folder, KAGGLE_PROCESSED)


def truth(dlrm_dir, data_dir, name, jobs):
    processed = data(data_dir, name)
    go = lambda runs: run_sweep(dlrm_dir, "kaggle", os.path.join(os.path.dirname(processed), "train.txt"), CSV,  # noqa: E731
                                (), (), (), runs=runs, regime=name, quiet=True, jobs=jobs,
                                extra_args=[f"--processed-data-file={processed}", "--mlet-mmap-data"],
                                work=os.path.join(data_dir, f"work-{name}"))
    tune(go, lambda: [r for r in read_rows(CSV) if r["regime"] == name], PLAN, (0, 1),
         lambda k: first_grid("sgd", k), extra_seeds=(2,))


def answers(entry):
    """(saving?, gain at d=16 positive by two standard errors?) of a ``pays`` entry; None where unknown: the
    gain with one seed on either side has no standard error."""
    if entry is None:
        return None, None
    gain = next((g for g in entry["gains"] if g["d"] == D), None)
    known = gain is not None and gain["seeds"] >= 2
    return bool(entry["saving"] and entry["saving"] > 1), gain["gain"] > 2 * gain["se"] if known else None


def map_answers(path):
    """What ``dlrm-mlet data`` says for the file: the nearest SGD regime's saving and gain at d=16."""
    info = data_report(path, quiet=True)
    share = info["overall"]["rare_lookup_share"]
    near = sorted((e for e in info["map"] if e["optimizer"] == "sgd"), key=lambda e: abs(e["rare_lookup_share"] - share))
    if not near:
        return None, None, share
    return (*answers(near[0]), share)


def pilots(dlrm_dir, data_dir, jobs, only=None):
    """``advise`` on each held-out regime, and on 1 % and 10 % of the full-size law (``only``: those named);
    their answers, kept."""
    found = json.load(open(PILOTS)) if os.path.exists(PILOTS) else {}
    cases = {name: (data(data_dir, name), int(HELD_OUT[name][0] * PILOT_SHARE), PILOT_MINUTES) for name in HELD_OUT}
    full = os.path.join(data_dir, "law-100pct", KAGGLE_PROCESSED)
    if os.path.exists(full):
        cases.update({name: (full, samples, minutes) for name, (samples, minutes) in FULL_LAW_PILOTS.items()})
    for name, (path, samples, minutes) in cases.items():
        if name in found or (only and name not in only):
            continue
        lines, entry = advise(path, minutes, dlrm_dir, D, 64,
                              os.path.join(data_dir, "advise-" + name.replace(" ", "-").replace(",", "").replace("%", "pct")),
                              samples, jobs, True)
        found[name] = {"verdict": lines[0], "answers": answers(entry) if "undecided" not in lines[0] else (None, None)}
        with open(PILOTS, "w") as handle:
            json.dump(found, handle, indent=1)
    return found


def pilot_label(name):
    samples, minutes = FULL_LAW_PILOTS[name]
    return f"pilot, {'1 %' if samples < 10**6 else '10 %'}, {minutes} min"


def full_law(data_dir):
    """The full-size law's truth (its 100 % tuned result) and every predictor's answers, or None before it."""
    rows = read_rows(os.path.join(HERE, "full_size.csv")) if os.path.exists(os.path.join(HERE, "full_size.csv")) else []
    arms = summarize([r for r in rows if r["tables"] == "plain" and r["optimizer"] == "sgd"])
    # the report's rule: an arm is tuned once tried at two lrs (at 100 %, the pair that brackets its 10 % optimum)
    entries = {e["regime"].rsplit(", ", 1)[-1]: e for e in pays.summarize_regimes(arms, tuned_arm)}
    path = os.path.join(data_dir, "law-100pct", KAGGLE_PROCESSED)
    at_full = [a for a in arms if a["regime"].endswith(", 100%")]
    if not at_full or not all(tuned_arm(a) for a in at_full) or not os.path.exists(path):
        return None
    found = json.load(open(PILOTS)) if os.path.exists(PILOTS) else {}
    m_saving, m_gain, share = map_answers(path)
    guesses = {"map": (m_saving, m_gain)}
    for name in FULL_LAW_PILOTS:
        guesses[pilot_label(name)] = tuple(found.get(name, {}).get("answers") or (None, None))
    for size in ("1%", "10%"):
        guesses[f"tuned curve at {size.replace('%', ' %')}"] = answers(entries.get(size))
    return answers(entries["100%"]), share, guesses


def write_report(data_dir):
    rows = read_rows(CSV) if os.path.exists(CSV) else []
    pilots_found = json.load(open(PILOTS)) if os.path.exists(PILOTS) else {}
    truths = {e["regime"]: e for e in pays.summarize_regimes(summarize(rows), tuned)}
    lines = ["# Which predictor was right", "", "Written by `predictors.py` (its docstring says how).", "",
             "| case | rare-lookup share | truth: saving? gain at d=16? | map's line | advise's pilot |",
             "|---|---|---|---|---|"]
    right = {"map": [0, 0], "pilot": [0, 0]}
    for name in HELD_OUT:
        t = answers(truths.get(name))
        if t == (None, None):
            continue
        m_saving, m_gain, share = map_answers(data(data_dir, name))
        p = tuple(pilots_found.get(name, {}).get("answers") or (None, None))
        for key, guess in (("map", (m_saving, m_gain)), ("pilot", p)):
            right[key][0] += sum(g is not None and g == x for g, x in zip(guess, t))
            right[key][1] += 2
        lines.append(f"| {name} | {share:.3f} | {t[0]}, {t[1]} | {m_saving}, {m_gain} | {p[0]}, {p[1]} |")
    full = full_law(data_dir)
    if full is not None:
        t, share, guesses = full
        lines.append(f"| full law, 100 % | {share:.3f} | {t[0]}, {t[1]} | " + " | ".join(
            f"{g[0]}, {g[1]}" for g in (guesses["map"], guesses[pilot_label(SCORED_PILOT)])) + " |")
        for key, label in (("map", "map"), ("pilot", pilot_label(SCORED_PILOT))):
            right[key][0] += sum(g is not None and g == x for g, x in zip(guesses[label], t))
            right[key][1] += 2
        lines += ["", "The full-size law, every predictor: " + "; ".join(
            f"{label}: {g[0]}, {g[1]}" for label, g in guesses.items()) + f" (truth: {t[0]}, {t[1]})."]
    lines += ["", f"Right answers: the map's line {right['map'][0]} of {right['map'][1]}, advise's pilot "
                  f"{right['pilot'][0]} of {right['pilot'][1]}.", ""]
    lines += ["Pilots' verdicts, as printed:", ""] + [f"- {name}: {p['verdict']}" for name, p in pilots_found.items()]
    with open(os.path.join(HERE, "predictors.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--phase", choices=("truth", "pilots", "report", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="pilots: only these cases (as the report names them)")
    args = parser.parse_args()
    dlrm_dir = os.environ.get("DLRM_DIR") or default_dlrm_dir()
    if args.phase in ("truth", "all"):
        for name in HELD_OUT:
            print(f"== truth: {name}", flush=True)
            truth(dlrm_dir, args.data_dir, name, args.jobs)
    if args.phase in ("pilots", "all"):
        pilots(dlrm_dir, args.data_dir, args.jobs, args.only)
    if args.phase in ("report", "all"):
        print("\n".join(write_report(args.data_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
