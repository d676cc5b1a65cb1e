"""How every command ends on a problem: one line on stderr and an exit code a script or scheduler can act on.

2: bad input the user can fix (:class:`~jaxtrans.errors.JaxtransError`), before anything is written.
75 (``EX_TEMPFAIL``): stopped by SIGTERM at a safe point (:mod:`jaxtrans.stop`); what was saved is kept and
the same command resumes (or, for commands that write one folder, starts again; nothing half-written is left).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from jaxtrans import stop
from jaxtrans.errors import JaxtransError, Preempted

USER_ERROR_EXIT = 2
PREEMPTED_EXIT = 75

T = TypeVar("T")


def guarded(
    fn: Callable[[], T],
    on_stop: str = "what was saved is kept; re-run the same command to resume",
    flag_sigterm: bool = True,
) -> T:
    """Run a command's body with SIGTERM as a flag: a user error exits 2, a stop exits 75, each in one line.

    ``flag_sigterm=False`` keeps the default SIGTERM (end at once) for commands that write nothing and wait on
    a terminal (chat), where a flag would not be read until the user typed."""
    if flag_sigterm:
        stop.install()
    try:
        result = fn()
        if flag_sigterm:  # the work is done: a SIGTERM during interpreter shutdown would only turn exit 0 into 143
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return result
    except JaxtransError as e:
        print(f"jaxtrans: error: {e}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except Preempted as e:
        message = str(e)
        print(f"jaxtrans: {message}{'' if 're-run' in message else '; ' + on_stop}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT)
