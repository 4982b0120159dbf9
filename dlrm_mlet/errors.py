"""The one exception type dlrm-mlet raises for bad input, and the one integer check.

Everything user-facing (the CLI, the DLRM glue) turns an ``MLETError`` into a
single line on stderr, so its message must name the problem on its own.
"""

import numbers
from typing import SupportsInt, cast


class MLETError(Exception):
    """Bad input or an unsafe state; the message is meant for the user as is."""


def integer(value: object, name: str, minimum: int = 0, text: bool = False) -> int:
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
    # past "not whole", value is an Integral or a whole Real: a numbers.Real that int() takes
    if isinstance(value, bool) or not whole or cast(numbers.Real, value) < minimum:
        raise MLETError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(cast(SupportsInt, value))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message: what a one-line error quotes of it."""
    text = str(error).strip().splitlines()
    return text[0] if text else "no detail"
