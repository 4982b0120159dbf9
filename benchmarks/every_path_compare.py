"""Did a change slow any path? ``every_path.py``'s result before and after it, path by path.

    # in a checkout before the change, then in this one, back to back on a quiet machine:
    python benchmarks/every_path.py
    python benchmarks/every_path_compare.py BEFORE/benchmarks/results/every_path.json --label "..."

Each path's cost is MLET's ms/it over stock DLRM's with the same optimizer,
both summaries (the median of the per-repetition ratios and the ratio of the
median ms/it). Stock runs inside each measurement, so what the machine did
between the two measurements divides out; the change is after / before of
each summary. AFTER defaults to this checkout's ``results/every_path.json``.
Writes ``results/every_path_compare.json`` and its section of RESULTS.md.
"""

import argparse
import json
import os

from common import RESULTS, machine_lines, md_table, save


def compare(before, after):
    """One row per path measured in both: each summary before, after, and after / before."""
    earlier = {r["name"]: r for r in before["results"]}
    rows = []
    for r in after["results"]:
        b = earlier.get(r["name"])
        if b is None:
            continue
        rows.append({"name": r["name"],
                     "before": [b["ratio_median"], b["ratio_of_medians"]],
                     "after": [r["ratio_median"], r["ratio_of_medians"]],
                     "change": [r["ratio_median"] / b["ratio_median"], r["ratio_of_medians"] / b["ratio_of_medians"]]})
    return rows


def render(data):
    lines = [f"## Every path before and after {data['label']} (`benchmarks/every_path_compare.py`)", ""]
    lines += ["Before:"] + machine_lines(data["before_machine"], data["before_command"])
    lines += ["", "After:"] + machine_lines(data["after_machine"], data["after_command"])
    lines += ["", "Each path's MLET ms/it over stock DLRM's with the same optimizer, as `every_path.py` measures it "
              "(median of per-repetition ratios; ratio of medians), before and after; change: after / before "
              "(below 1: faster). " + (f"Largest change: {max(max(r['change']) for r in data['rows']):.2f}."
                                      if data["rows"] else "")]
    lines += [""] + md_table(["path", "before (median of ratios; of medians)", "after", "change"], [
        [r["name"], "{:.2f}; {:.2f}".format(*r["before"]), "{:.2f}; {:.2f}".format(*r["after"]),
         "{:.2f}; {:.2f}".format(*r["change"])] for r in data["rows"]])
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="every_path.json measured before the change")
    parser.add_argument("after", nargs="?", default=os.path.join(RESULTS, "every_path.json"))
    parser.add_argument("--label", default="the change", help="what changed, for the section's title")
    args = parser.parse_args()
    before, after = (json.load(open(path)) for path in (args.before, args.after))
    payload = {"label": args.label, "before_machine": before["machine"], "before_command": before["command"],
               "after_machine": after["machine"], "after_command": after["command"],
               "rows": compare(before, after)}
    print(save("every_path_compare", payload, render))
    print("\n".join(render({**payload})))


if __name__ == "__main__":
    main()
