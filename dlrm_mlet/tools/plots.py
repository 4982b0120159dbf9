"""matplotlib, an optional dependency, for the commands that draw: one import and one way to save."""

import importlib.util
from types import ModuleType
from typing import TYPE_CHECKING, Tuple

from ..errors import MLETError
from ..files import StrPath, atomic_write

if TYPE_CHECKING:  # matplotlib is imported where a plot is drawn
    from matplotlib.figure import Figure


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported here (a default plot is drawn only then)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot(what: str = "the plot") -> Tuple[ModuleType, ModuleType]:
    """``(matplotlib.pyplot, matplotlib)`` drawing to files (Agg); one line naming the extra when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)
    except ImportError:
        raise MLETError(f"{what} needs matplotlib: pip install matplotlib") from None
    return plt, matplotlib


def save(fig: "Figure", path: StrPath) -> None:
    """A PNG whatever the name's extension, never half-drawn under the asked name; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    finally:
        plt.close(fig)
