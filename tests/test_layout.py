"""The package's shape, read from its source: no import circle, small modules, imports at the top.

An import inside a function hides a dependency (and, often, a circle): only
optional dependencies may be imported there, and the command dispatcher
(``cli.py``, ``commands.py``), which imports each command's module when it runs so that
``--help`` and torch-free commands start without torch.
"""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dlrm_mlet"
# A module holds one job, however long; the cap is what the largest job here needs with room
# (sweep, report: about 400 lines, annotated): a module past it has likely started a second job.
MAX_LINES = 500
OPTIONAL = {"torchrec", "fbgemm_gpu", "matplotlib", "onnx", "onnxruntime", "sklearn", "tqdm"}
DISPATCHERS = {PACKAGE / "cli.py", PACKAGE / "commands.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _target(name, path, node):
    """The package module an import statement names (None: outside the package)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [alias.name for alias in node.names]


def _top_level_edges():
    modules = {name: (path, tree) for name, path, tree in _modules()}
    edges = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _target(name, path, node):
                    if target in modules and target != name:
                        edges[name].add(target)
    return edges


def test_no_import_circle_in_the_package():
    edges = _top_level_edges()
    state, circles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own modules is not a circle: they import it first anyway.
    circles = [c for c in circles if not any(c[i].startswith(c[i + 1] + ".") for i in range(len(c) - 1))]
    assert circles == []


# The package's layers, bottom up (docs/layout.md): a module imports only from its own folder (or file)
# and from layers below it, at the top or inside a function alike.
LAYERS = [
    {"errors", "progress"},
    {"files", "core"},
    {"checkpoint_io", "data", "engine"},
    {"dlrm", "torchrec"},
    {"tools", "dlrm_glue", "__init__"},
    {"commands"},
    {"cli"},
    {"__main__"},
]


def _unit(name):
    """A module's room: its folder under the package (``core``), or its own file (``cli``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_has_a_layer_and_no_import_runs_up_or_across():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    modules = {name: (path, tree) for name, path, tree in _modules()}
    assert {_unit(name) for name in modules} <= set(layer), "a new folder or module needs its place in LAYERS"
    wrong = set()
    for name, (path, tree) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _target(name, path, node):
                    if target in modules and _unit(target) != _unit(name) \
                            and layer[_unit(target)] >= layer[_unit(name)]:
                        wrong.add((name, target))
    assert wrong == set()


def test_no_module_borrows_another_modules_private_names():
    """A name with a leading underscore is its module's own; another module needing it means it is not private."""
    borrowed = [f"{name}: {node.module}.{alias.name}" for name, path, tree in _modules() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and any(t.startswith("dlrm_mlet") for t in _target(name, path, node))
                for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert borrowed == []


def test_no_module_is_over_the_line_cap():
    long = {str(path.relative_to(PACKAGE)): n for _, path, _ in _modules()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_imports_inside_functions_are_only_optional_dependencies():
    found = []
    for name, path, tree in _modules():
        if path in DISPATCHERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and not sub.level:
                        root = (sub.module or "").split(".")[0]
                    elif isinstance(sub, ast.Import):
                        root = sub.names[0].name.split(".")[0]
                    elif isinstance(sub, ast.ImportFrom):
                        root = "dlrm_mlet"
                    else:
                        continue
                    if root not in OPTIONAL:
                        found.append(f"{path.relative_to(PACKAGE)}:{sub.lineno}")
    assert found == []


def test_help_and_torch_free_commands_start_without_torch():
    code = ("import sys; from dlrm_mlet import cli; cli.build_parser();"
            "import dlrm_mlet.tools.report, dlrm_mlet.tools.data_report, dlrm_mlet.tools.plan, dlrm_mlet.tools.synth;"
            "import dlrm_mlet.dlrm.patching; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_layout_page_names_every_module():
    """docs/layout.md is the map of the house: a module it does not name is a room nobody can find."""
    page = (PACKAGE.parent / "docs" / "layout.md").read_text()
    missing = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "__init__.py" and f"`{path.stem}" not in page]
    assert missing == []
