"""``dlrm-mlet run``: MLET on a DLRM checkout you may not modify, through the same patch.

The checkout's ``dlrm_s_pytorch.py`` is patched in a temporary copy
(``patching.patched_script``: the patch's hunks, checked against the pinned
commit's blob as ``dlrm-mlet patch`` checks them) and that copy runs as DLRM
runs, as ``__main__``, with the checkout's folder first on ``sys.path`` so
every module it imports is the checkout's own. There is one way into DLRM:
whatever the patched checkout does, this does (resume, ``--mlet-checkpoint``,
the lr scales included), and the user's files are never written. A checkout
already patched runs as it is.
"""

import os
import runpy
import sys
import tempfile
from typing import Iterable

from ..errors import MLETError
from ..files import StrPath
from .patching import patched_script
from .script import SCRIPT


def run_script(script: StrPath, dlrm_args: Iterable[str]) -> int:
    """Run DLRM's ``run()`` from a patched copy of ``script``; returns its exit status."""
    script = os.path.abspath(script)
    if not os.path.isfile(script):
        raise MLETError(f"{script}: no such file (expected DLRM_DIR/{SCRIPT})")
    with open(script, encoding="utf-8") as handle:
        source = handle.read()
    if "class DLRM_Net" not in source or "def run()" not in source:
        raise MLETError(f"{script}: not DLRM's {SCRIPT} (no DLRM_Net or run())")
    patched = patched_script(source, SCRIPT)
    folder = os.path.dirname(script)
    with tempfile.TemporaryDirectory(prefix="dlrm-mlet-run-") as work:
        copy = os.path.join(work, SCRIPT)
        with open(copy, "w", encoding="utf-8") as handle:
            handle.write(patched)
        sys.argv = [script] + list(dlrm_args)
        sys.path.insert(0, folder)  # the checkout's modules (dlrm_data_pytorch, tricks, ...)
        try:
            runpy.run_path(copy, run_name="__main__")
        finally:
            sys.path.remove(folder)
    return 0
