"""The one exception type dlrm-mlet raises for bad input, and the one integer check.

Everything user-facing (the CLI, the DLRM glue) turns an ``MLETError`` into a
single line on stderr, so its message must name the problem on its own.
"""

import numbers


class MLETError(Exception):
    """Bad input or an unsafe state; the message is meant for the user as is."""


def integer(value, name, minimum=0, text=False):
    """``value`` as an int >= ``minimum``, or ``MLETError`` naming ``name`` (a flag or an argument).

    ``text``: a command-line value, parsed from its text (``str(value)``); in
    Python a string is refused. A bool or a float is refused, not truncated: ``64.5`` is a
    mistake, and so is ``True``.
    """
    if text and not isinstance(value, numbers.Integral):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise MLETError(f"{name}: expected an integer >= {minimum}, got {value!r}") from None
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not whole or value < minimum:
        raise MLETError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def first_line(error):
    """The first line of an exception's message: what a one-line error quotes of it."""
    text = str(error).strip().splitlines()
    return text[0] if text else "no detail"
