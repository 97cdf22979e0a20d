"""Progress of a whole spec in real units: rows (one run on one example) done of a total.

What it owns: :class:`Tally`, which turns the executor's per-program counts into one count
across everything a spec executes, :class:`Tick` (what a progress callback receives: rows done
of the total, phase, rate, time left) and :func:`lines`, the printer for logs (one line per
phase; the CLI draws a rich bar on a terminal). No torch, no model.

A spec executes one fused program (every sweep, path patching, patch and scrub experiment,
and the M, ∅ and C runs of each circuit experiment), then each circuit experiment's
completeness and minimality searches, one further program per search step. The fused
program's rows are known as soon as it starts. A search's rows are not: greedy steps depend on
the numbers, and circuits already measured are not measured again. So each search is planned
at its upper bound (:func:`circuit_bound`, the count in :mod:`intervene.scores`) and the
unspent part is dropped when the search ends: the total only ever shrinks, and the estimated
time left is never too short because of it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

Report = Callable[["Tick"], None]


@dataclass(frozen=True)
class Tick:
    """Where a spec's execution stands: ``done`` of ``total`` rows, in ``phase``."""

    done: int
    total: int
    phase: str
    seconds: float  # since the tally started

    @property
    def rate(self) -> float:
        """Rows per second so far (0 before the first row)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first row."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


def circuit_bound(units: int, random_k: int, greedy_steps: int, minimality_samples: int) -> int:
    """The most circuits a circuit experiment's searches evaluate beyond M, ∅ and C (which the
    fused program computes): 2R + 2·Σ_{t<min(G,U)} (U − t) + U·(1 + 2S)."""
    steps = min(greedy_steps, units)
    return 2 * random_k + 2 * sum(units - t for t in range(steps)) + units * (1 + 2 * minimality_samples)


class Tally:
    """One count across programs. :meth:`program` is the callback an executor calls as
    ``(rows done, rows total)`` of its current program; :meth:`plan` reserves the rows of
    phases to come, :meth:`phase` starts one with the rows it may spend (0: its programs' own
    totals), and :meth:`finish` drops what a phase planned and did not spend."""

    def __init__(self, report: Report, clock: Callable[[], float] = time.perf_counter) -> None:
        self.report, self.clock = report, clock
        self._t0 = clock()
        self._finished = 0  # rows of finished programs
        self._done = self._total = 0  # the running program's
        self._planned = 0  # rows the current phase may still spend
        self._later = 0  # rows reserved for phases not started yet
        self._phase = ""

    def plan(self, rows: int) -> None:
        """Reserve ``rows`` for phases still to come (the circuit searches' bounds)."""
        self._later += rows

    def phase(self, name: str, rows: int = 0) -> None:
        """Start a phase that may spend ``rows`` (taken out of what :meth:`plan` reserved)."""
        self._phase, self._planned = name, rows
        self._later = max(0, self._later - rows)
        self.report(self.tick())

    def program(self, done: int, total: int) -> None:
        """The executor's callback for the running program of the current phase."""
        self._done, self._total = done, total
        if done >= total:
            self._finished += total
            self._planned = max(0, self._planned - total)
            self._done = self._total = 0
        self.report(self.tick())

    def finish(self) -> None:
        """The current phase is over: forget what it planned and did not spend."""
        self._planned = 0
        self.report(self.tick())

    def tick(self) -> Tick:
        done = self._finished + self._done
        total = self._finished + max(self._total, self._planned) + self._later
        return Tick(done, max(total, done), self._phase, self.clock() - self._t0)


def _duration(s: float | None) -> str:
    if s is None:
        return "-:--"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(t: Tick) -> str:
    """One line: ``phase: 1,234/5,678 rows (22%), 310 rows/s, 0:14 left``."""
    pct = f" ({100 * t.done / t.total:.0f}%)" if t.total else ""
    return (f"{t.phase}: {t.done:,}/{t.total:,} rows{pct}, {t.rate:,.0f} rows/s, "
            f"{_duration(t.seconds)} elapsed, {_duration(t.eta)} left")


def lines(stream: TextIO | None = None) -> Report:
    """A printer for logs: one line per phase, when its size is known (never one per chunk)."""
    last: list[str] = []

    def report(t: Tick) -> None:
        if (not last or t.phase != last[0]) and t.total > 0:  # once the phase's size is known
            last[:] = [t.phase]
            print(describe(t), file=stream or sys.stderr, flush=True)

    return report
