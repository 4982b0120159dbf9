"""The MLET layers, the grouped engine, folding and ``to_mlet``: everything a model needs."""
