"""MLET inside TorchRec: a sharded collection that folds into a stock ``EmbeddingBagCollection``."""

from .collection import MLETEmbeddingBagCollection, fold_torchrec, mlet_dlrm, sparse_parameters

__all__ = ["MLETEmbeddingBagCollection", "fold_torchrec", "mlet_dlrm", "sparse_parameters"]
