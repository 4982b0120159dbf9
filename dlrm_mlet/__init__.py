"""dlrm-mlet: multi-layer embedding training (MLET) for facebookresearch/dlrm.

Train each embedding table as an ``n x k`` table followed by a ``k -> d``
projection (``k >> d``), then fold the pair into one plain ``n x d`` table, so
the saved model is a stock DLRM model (Ghaemmaghami et al., arXiv 2006.05623).
"""

__version__ = "0.1.0"

from .errors import MLETError
from .folding import fold_model, fold_state_dict
from .table import MLETEmbeddingBag

__all__ = ["MLETEmbeddingBag", "MLETError", "fold_model", "fold_state_dict", "__version__"]
