"""Where a run's wall time goes: seconds per stage and phase, and the machine they were measured on.

A run's :class:`Clock` is started when the run starts; stages and helpers
wrap their work in ``clock.phase(what)``. Time is charged to the innermost
phase open (a held-out point measured inside a train stage is the point's
time, not the steps'), so the rows plus the ``other`` row (what no phase
claimed: imports, reading configs, writing reports) add up to the run's wall
time exactly. The report's time table and ``docs/benchmarks.md`` rows come
from here, with :func:`machine` beside them: the same command takes twice as
long on another CPU, so a number without its machine says little.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from collections.abc import Iterator
from typing import Any

OTHER = "other (imports, config and data checks, reports)"


@dataclasses.dataclass
class _Row:
    seconds: float = 0.0
    count: int = 0  # how many times the phase ran (steps: how many steps)
    positions: int = 0  # train steps: token positions processed (rows x length x micro-batches)


class Clock:
    """Wall time per (stage, phase); ``stage`` is set by whoever runs the stages."""

    def __init__(self, since_process_start: bool = False) -> None:
        """``since_process_start``: count from the process's start (imports included), not from now."""
        self.started = time.perf_counter() - (process_age() if since_process_start else 0.0)
        self.stage = "start"
        self._rows: dict[tuple[str, str], _Row] = {}
        self._open: list[list[Any]] = []  # [key, since] of each open phase, innermost last

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[dict[str, int]]:
        """Charge the time inside to ``what`` in the current stage (an outer phase pauses meanwhile). The dict it
        gives may be told ``count`` (default 1: one run of the phase; train steps: the steps done) and
        ``positions`` (token positions the steps processed)."""
        note = {"count": 1, "positions": 0}
        now = time.perf_counter()
        if self._open:
            self._charge(self._open[-1], now)
        entry = [(self.stage, what), now]
        self._open.append(entry)
        try:
            yield note
        finally:
            now = time.perf_counter()
            self._open.pop()
            self._charge(entry, now)
            row = self._rows[entry[0]]
            row.count, row.positions = row.count + note["count"], row.positions + note["positions"]
            if self._open:
                self._open[-1][1] = now

    def _charge(self, entry: list[Any], now: float) -> None:
        self._rows.setdefault(entry[0], _Row()).seconds += now - entry[1]
        entry[1] = now

    def table(self, other: str = OTHER) -> dict[str, Any]:
        """The rows in the order they first ran, plus ``other`` (what no phase claimed); ``wall_s`` is the time since
        the start."""
        wall = time.perf_counter() - self.started
        rows = [{"stage": stage, "phase": what, "seconds": round(r.seconds, 2), "count": r.count,
                 "positions": r.positions} for (stage, what), r in self._rows.items()]  # fmt: skip
        claimed = sum(r.seconds for r in self._rows.values())
        rows.append({"stage": "", "phase": other, "seconds": round(wall - claimed, 2), "count": 1, "positions": 0})
        return {"machine": machine(), "wall_s": round(wall, 2), "rows": rows}


def markdown(table: dict[str, Any], title: str = "## Time") -> list[str]:
    """A time table as Markdown lines: one row a phase, with steps' seconds per step and positions per second."""
    wall = table["wall_s"]
    head = f"Measured on {table['machine']}; {_clock(wall)} in all (this invocation: a resumed run counts what it did)."
    lines = [title, "", head, "", "| stage | phase | time | share | detail |", "|---|---|---|---|---|"]
    for r in table["rows"]:
        detail = ""
        if r["positions"] and r["count"]:
            speed = f"{r['positions'] / r['seconds']:.0f} positions/s" if r["seconds"] else ""
            detail = f"{r['count']} steps, {r['seconds'] / r['count']:.2f} s/step, {speed}"
        elif r["count"] == 0:
            detail = "from the cache: nothing computed"
        elif r["count"] > 1:
            detail = f"{r['count']} times"
        share = r["seconds"] / wall if wall else 0.0
        lines.append(f"| {r['stage']} | {r['phase']} | {_clock(r['seconds'])} | {share:.0%} | {detail} |")
    return lines + [""]


def _clock(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def process_age() -> float:
    """Seconds since this process started (Linux: ``/proc``; elsewhere 0, the clock then starts late)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def machine() -> str:
    """The CPU model and cores, the accelerator (if any) and the jax version, in one line."""
    import jax

    cpu = _cpu_model()
    devices = jax.devices()
    accel = "no accelerator"
    if devices and devices[0].platform != "cpu":
        accel = f"{len(devices)} x {devices[0].device_kind}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu} ({cores} cores), {accel}, jax {jax.__version__}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
