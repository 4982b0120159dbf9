"""dlrm-mlet: multi-layer embedding training (MLET) for facebookresearch/dlrm.

Train each embedding table as an ``n x k`` table followed by a ``k -> d``
projection (``k >> d``), then fold the pair into one plain ``n x d`` table, so
the saved model is a stock DLRM model (Ghaemmaghami et al., arXiv 2006.05623).
"""

import importlib

__version__ = "0.1.0"

# Resolved on first use (PEP 562): commands that need no torch, such as
# `dlrm-mlet patch`, then start in a fraction of a second instead of seconds.
_EXPORTS = {
    "MLETEmbeddingBag": "core.bag",
    "MLETEmbedding": "core.embedding",
    "MLETError": "errors",
    "to_mlet": "core.convert",
    "fold_model": "core.convert",
    "fold_state_dict": "core.folding",
    "attach": "core.step",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
