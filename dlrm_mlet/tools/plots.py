"""matplotlib, an optional dependency, for the commands that draw: one import and one way to save."""

import importlib.util

from ..errors import MLETError
from ..files import atomic_write


def has_matplotlib():
    """Whether matplotlib can be imported here (a default plot is drawn only then)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot(what="the plot"):
    """``(matplotlib.pyplot, matplotlib)`` drawing to files (Agg); one line naming the extra when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)
    except ImportError:
        raise MLETError(f"{what} needs matplotlib: pip install matplotlib") from None
    return plt, matplotlib


def save(fig, path):
    """A PNG whatever the name's extension, never half-drawn under the asked name; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))
    finally:
        plt.close(fig)
