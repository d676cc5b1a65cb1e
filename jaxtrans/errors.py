"""One exception type for problems a user can fix.

Everything that stems from user input (paths, configs, data, shapes that do not
fit a mesh) raises :class:`JaxtransError` with a single line that names the
problem and the fix. ``jaxtrans.main`` prints that line and exits with code 2
instead of a traceback.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence


class JaxtransError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


class Preempted(Exception):
    """The run stopped on SIGTERM after saving what was consistent; the same command resumes it (exit 75)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`JaxtransError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise JaxtransError(message)


def one_of(key: str, value: object, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, suggesting the closest (``cosin`` -> ``cosine``)."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise JaxtransError(f"{key}={value!r} is not one of {', '.join(allowed)}{hint}")


def number(key: str, value: object, low: float = 0.0, inclusive: bool = True) -> None:
    """Refuse anything but a finite number ``>= low`` (``> low`` unless ``inclusive``): no NaN, no infinity."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        raise JaxtransError(f"{key}={value!r} must be a finite number {bound}")
