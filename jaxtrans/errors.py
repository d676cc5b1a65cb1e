"""One exception type for problems a user can fix.

Everything that stems from user input (paths, configs, data, shapes that do not
fit a mesh) raises :class:`JaxtransError` with a single line that names the
problem and the fix. ``jaxtrans.main`` prints that line and exits with code 2
instead of a traceback.
"""

from __future__ import annotations


class JaxtransError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`JaxtransError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise JaxtransError(message)
