"""The many-tables engine: what a model with dozens of MLET tables called every step runs on.

A model that calls one or a few MLET tables needs nothing here: ``core``'s
``MLETEmbeddingBag`` trains alone. A model that calls many tables of the same
shape in one step, as DLRM does (26 Criteo tables; ``dlrm/tables.py`` wires it
in), pays per-table overhead: 26 gathers, 26 autograd nodes, 26 sparse
gradients, 52 parameters in the optimizer's loop. The engine runs such tables
together: ``grouped`` pools and projects a group as one autograd node,
``routes`` sends its gradients where the tables' declared update says,
``packing`` keeps a group's tables in one buffer so gathers and updates are one
op, ``fused`` applies SGD's update at the optimizer's step without gradient
tensors, ``adaptive`` does the same for Adagrad and row-wise Adagrad,
``half_update`` for half-precision tables, and ``tbe`` hands SGD's step to
fbgemm's table-batched kernels.
"""
