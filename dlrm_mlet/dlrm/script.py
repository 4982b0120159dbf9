"""Where the user's DLRM checkout is, and importing its ``dlrm_s_pytorch.py`` as a module.

The tests and the benchmarks run DLRM's script in-process; they find and
import it the same way, here (``dlrm-mlet run`` runs a patched copy: ``launcher.py``). No torch import: ``dlrm-mlet
patch`` and the CLI's defaults need only the folder.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import cast

SCRIPT = "dlrm_s_pytorch.py"


def default_dlrm_dir() -> str:
    """``$DLRM_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/dlrm-mlet/dlrm`` (where the quickstart clones it)."""
    if os.environ.get("DLRM_DIR"):
        return os.environ["DLRM_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "dlrm-mlet", "dlrm")


def import_dlrm_script(where: str, name: str = "dlrm_s_pytorch", keep_path: bool = False) -> types.ModuleType:
    """Import a checkout's ``dlrm_s_pytorch.py`` (``where``: the folder or the file) under ``name``.

    Its folder goes first on ``sys.path`` while it runs, for its own imports
    (``dlrm_data_pytorch``, ``tricks``, ...); ``keep_path`` leaves it there,
    as a process that goes on to run DLRM needs. ``__main__`` is not its name,
    so importing runs nothing; the module is registered in ``sys.modules``.
    """
    script = where if where.endswith(".py") else os.path.join(where, SCRIPT)
    directory = os.path.dirname(os.path.abspath(script))
    added = sys.path[:1] != [directory]  # first, so this checkout's modules win
    if added:
        sys.path.insert(0, directory)
    try:
        # a .py path always has a spec, and a source loader
        spec = cast(importlib.machinery.ModuleSpec, importlib.util.spec_from_file_location(name, script))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            cast(importlib.abc.Loader, spec.loader).exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    finally:
        if added and not keep_path:
            sys.path.remove(directory)
