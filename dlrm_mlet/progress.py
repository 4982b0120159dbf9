"""One progress bar for every long command (synth, preprocessing, fold, inspect, report).

tqdm gives rate and ETA. It draws only on a terminal, so logs and CI output
stay clean, and never with ``--quiet``. tqdm is not a hard dependency (it
comes with the ``[dlrm]`` extra, and DLRM itself needs it): without it there
is simply no bar.
"""

import contextlib
import sys
from typing import ContextManager, Optional, Protocol


class ProgressBar(Protocol):
    """What ``progress_bar`` yields: tqdm's bar, or one that draws nothing."""

    def update(self, n: int = 1) -> object: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def progress_bar(total: Optional[int], desc: str, quiet: bool = False,
                 unit: str = " rows") -> ContextManager[ProgressBar]:
    """A context manager yielding an object with ``update(n)``."""
    if quiet or not sys.stderr.isatty():
        return contextlib.nullcontext(_NoBar())
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(_NoBar())
    # counts of rows read as 1.2M; runs, tables and stages as whole numbers
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit.strip() == "rows", file=sys.stderr)
