"""The one exception type dlrm-mlet raises for bad input.

Everything user-facing (the CLI, the DLRM glue) turns an ``MLETError`` into a
single line on stderr, so its message must name the problem on its own.
"""


class MLETError(Exception):
    """Bad input or an unsafe state; the message is meant for the user as is."""
