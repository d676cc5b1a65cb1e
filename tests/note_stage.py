"""A stage kind defined outside the library (tests/test_pipeline.py registers it): ``note`` writes the state's
digest and a line of text into ``stages/NAME/note.txt`` and records it in the report."""

from __future__ import annotations

import os
from typing import Any

from jaxtrans.errors import JaxtransError


def check(cfg: Any, name: str, stage: Any, earlier: list[str]) -> None:
    if not stage.get("text"):
        raise JaxtransError(f"note stage {name!r} has no text; set stages.{name}.text")


def preflight(cfg: Any, name: str, stage: Any, mesh: Any) -> dict[str, int]:
    return {}


def run(state: Any, name: str, stage: Any) -> None:
    path = os.path.join(state.stage_dir(name), "note.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{stage.text} {state.state_digest()}\n")
    state.record("notes", name, {"after": list(state.report.get("stages", {})), "state": state.state_digest()})


def fingerprint(cfg: Any, name: str, stage: Any) -> None:
    return None  # keeps nothing a re-run must match
