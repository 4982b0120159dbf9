"""The MLET layers any model needs: the tables, their folding, ``to_mlet``, half tables, the memory budget."""
