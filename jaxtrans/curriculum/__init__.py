"""The curriculum's stage kinds, one module each, and the state they hand to each other.

A stage kind is a module with four functions (see :class:`StageKind`):

* ``check(cfg, name, stage, earlier)``: config-only checks, no files read
  (``earlier`` is the kinds of the stages before this one);
* ``preflight(cfg, name, stage, mesh)``: read the stage's local data once, so
  bad data fails before any model weight is read; returns record counts;
* ``run(state, name, stage)``: do the stage on the shared :class:`RunState`;
* ``fingerprint(cfg, name, stage)``: the settings that determine the stage's
  kept results as ``{dotted config key: value}`` (None for a kind that keeps
  none): a re-run with other settings is refused (``identity``).

Optionally ``PHASE``: what the report's time table calls the stage's own work
(what its nested phases, such as held-out points, do not claim; default: the
kind's name); and ``produced(out, name)``: whether the stage has left a result; a
stage that fails before producing one has its fingerprint removed, so the
corrected command is not refused (a kind without it keeps the fingerprint).

``jaxtrans.pipeline.STAGE_KINDS`` maps ``kind`` names to these modules; adding a
kind is one new module and one entry there (or :func:`jaxtrans.pipeline.register`).
"""

from __future__ import annotations

from typing import Any, Protocol

from jaxtrans.curriculum.state import Preempted, RunState

__all__ = ["Preempted", "RunState", "StageKind"]


class StageKind(Protocol):
    """What a stage-kind module provides."""

    def check(self, cfg: Any, name: str, stage: Any, earlier: list[str]) -> None: ...

    def preflight(self, cfg: Any, name: str, stage: Any, mesh: Any) -> dict[str, int]: ...

    def run(self, state: RunState, name: str, stage: Any) -> None: ...

    def fingerprint(self, cfg: Any, name: str, stage: Any) -> dict[str, Any] | None: ...
