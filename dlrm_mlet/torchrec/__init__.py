"""MLET inside TorchRec: a sharded collection that folds into a stock ``EmbeddingBagCollection``.

``collection``: the layer (k-wide tables in a standard collection, projections
beside it); ``sharding``: its sharder, under which each rank projects its
shards' pooled outputs to d before they are sent; ``fold``: a trained model,
sharded or not, as a stock state dict; ``trainer``: the hooks DLRM's patched
TorchRec trainer calls.
"""

from .collection import MLETEmbeddingBagCollection, mlet_dlrm, sparse_parameters
from .fold import fold_torchrec_state_dict
from .sharding import MLETEmbeddingBagCollectionSharder, ShardedMLETEmbeddingBagCollection, sharders

__all__ = [
    "MLETEmbeddingBagCollection", "MLETEmbeddingBagCollectionSharder", "ShardedMLETEmbeddingBagCollection",
    "fold_torchrec_state_dict", "mlet_dlrm", "sharders", "sparse_parameters",
]
