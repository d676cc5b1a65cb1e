"""Write a directory all at once: build it beside its destination, rename it into place only when complete.

Used by every writer of a user-facing output directory (exports, extended tokenizers), so a failure or
an interrupt leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from jaxtrans.errors import JaxtransError


@contextlib.contextmanager
def staged_dir(out_dir: str, prefix: str = ".staged-") -> Iterator[str]:
    """A temporary directory beside ``out_dir`` that replaces ``out_dir`` if the block succeeds and vanishes if not."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as e:
        raise JaxtransError(f"cannot write {out_dir}: {e.strerror} in {parent}") from None
    try:
        yield tmp
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
