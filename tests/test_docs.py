"""The README and docs/ speak to users: every figure the README gives is a report's, and no page speaks
of how the project was built (issue numbers, the machines it was built on)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "docs" / "results" / "README.md"]
REPORTS = [*sorted((ROOT / "docs" / "results").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")  # 0.7501, 1.13: not 2.13.0, not x1.5y
# Versions are not figures: "torch 2.13 and 2.14", "Python 3.11", "TorchRec 1.8 and 1.9"
VERSIONS = re.compile(r"(?:Python|torch|numpy|TorchRec|fbgemm\S*)[ =]*\d+(?:\.\d+)+(?:\.x)?"
                      r"(?:(?:,|\s+and|\s+or)\s+\d+(?:\.\d+)+(?:\.x)?)*")


def test_every_figure_in_the_readme_is_a_reports_figure():
    reports = "\n".join(path.read_text() for path in REPORTS)
    readme = ROOT.joinpath("README.md").read_text()
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)  # the quickstart's printed table is a run, not a claim
    prose = VERSIONS.sub("", re.sub(r"arXiv:\d+\.\d+|\(https?://[^)]*\)", "", prose))
    missing = sorted({f for f in FIGURE.findall(prose) if f not in reports})
    assert missing == []


def test_the_cost_tables_are_the_benchmarks_latest_figures():
    """Hand-written tables go stale when a benchmark is rerun, and short figures such as 1.18 turn up in
    some other report by chance: every path's two summaries must be the ones in every_path.json."""
    import json
    import statistics

    data = json.loads(ROOT.joinpath("benchmarks", "results", "every_path.json").read_text())
    sgd = next(r for r in data["results"] if r["name"] == "MLET sgd fp32")
    expected = [f"{r['ratio_median']:.2f} ({r['ratio_of_medians']:.2f})" for r in data["results"]
                if "eager" not in r["name"]] + [f"{statistics.median(sgd['stock_ms_per_it']):.2f}"]
    for page in ("README.md", "docs/training-cost.md"):
        text = re.sub(r"\s+", " ", ROOT.joinpath(page).read_text())
        assert [f for f in expected if f not in text] == [], page


def test_the_readme_is_a_front_page():
    assert len(ROOT.joinpath("README.md").read_text().splitlines()) <= 250


def test_no_page_speaks_of_how_the_project_was_built():
    words = re.compile(r"(?<!upstream issue )#\d+\b|\blent\b|shared/data|build machine|this project's shared"
                       r"|before #|TODO|placeholder|[A-Z_]{8,}_(?:TABLE|PARAGRAPH)")
    found = [f"{page.relative_to(ROOT)}: {m.group(0)}" for page in PAGES for m in words.finditer(page.read_text())]
    assert found == []


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def _shell_lines(text):
    """The logical command lines of a page's fenced code blocks: continuations joined, prompts and
    comments dropped."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"^\$ ", "", line.strip())
            line = re.sub(r"\s+#.*$", "", line)
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_every_command_a_page_shows_works_verbatim():
    """Each ``dlrm-mlet`` command in a code block parses with the options the CLI has; each script it names
    exists; a patch applied by hand names a path that holds from inside the DLRM folder."""
    import shlex

    from dlrm_mlet.cli import build_parser

    problems, checked = [], 0
    for page in PAGES:
        for line in _shell_lines(page.read_text()):
            where = f"{page.relative_to(ROOT)}: {line}"
            if not line.startswith(("dlrm-mlet ", "python ", "run_scripts/", ".ci/", "docs/", "git -C")):
                continue  # output, Python code, other tools' commands
            words = shlex.split(line.replace("<any DLRM args>", "--nepochs=1"))
            if words[0] == "dlrm-mlet":
                checked += 1
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit:
                    problems.append(where)
            elif words[0] == "python" and words[1].startswith(("docs/", "benchmarks/")):
                checked += 1
                if not (ROOT / words[1]).is_file():
                    problems.append(where)
            elif words[0].startswith(("run_scripts/", ".ci/", "docs/")):
                checked += 1
                if not (ROOT / words[0]).is_file():
                    problems.append(where)
            elif words[:2] == ["git", "-C"] and "apply" in words:
                checked += 1
                patch = words[words.index("apply") + 1]
                if not (patch.startswith(("/", "$PWD", "${PWD}")) or "dlrm_s_pytorch" in patch):
                    problems.append(where + "  (a relative patch path is read inside the DLRM folder)")
    assert problems == [] and checked >= 12  # the pages show this many; fewer means the extraction broke
