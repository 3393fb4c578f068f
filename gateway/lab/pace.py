"""Deadlines that scale with the measured speed of the machine the lab runs on.

The lab runs on an idle host with kernel ESP, on a busy shared machine, and inside a VM
under software emulation (TCG, ~25x slower when idle, ~45x with a CPU hog per core).
A fixed timeout is either far too long for the first or too short for the last. So every
wait of the lab has a budget in *reference seconds* (seconds on an idle machine of the
development kind), multiplied by a *slowness factor*: the time a fixed calibration step
takes here divided by the time it takes on that reference machine.

The step is CPU work of the kind the lab waits on (Python byte code and a C hash loop), so
its wall time reflects both the CPU's speed and its contention. It is measured when the
lab starts and again whenever a deadline runs out: if the machine has become slower
meanwhile, the deadline grows accordingly once more, rather than failing a step that is
merely slow. A failure names the step, its budget and the factor, and carries the log
lines that explain it.
"""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.errors import GatewayError

# The calibration step's wall time on the reference machine (an idle 2-vCPU Debian 12
# development machine, measured: 16 ms; ~0.4 s inside the lab VM under TCG).
REFERENCE_SECONDS = 0.016
# Never shorter than this, whatever the factor says (a fast idle host still has to run
# `ip`, start Python daemons, ...).
FLOOR_SECONDS = 20.0
# The factor is capped: beyond it the machine is unusable and waiting longer only hides it.
MAX_FACTOR = 400.0
_BLOCK = b"\x5a" * 65536


def calibration_step() -> float:
    """Wall seconds of one fixed piece of work: a Python loop and a SHA-256 over 8 MiB."""
    started = time.perf_counter()
    acc = 0
    for i in range(400_000):
        acc += i * i % 7
    digest = hashlib.sha256()
    for _ in range(128):
        digest.update(_BLOCK)
    digest.digest()
    return time.perf_counter() - started


def measure_factor(step: Callable[[], float] = calibration_step, runs: int = 3) -> float:
    """How many times slower than the reference machine this one runs now (>= 1)."""
    seconds = statistics.median(step() for _ in range(runs))
    return min(max(seconds / REFERENCE_SECONDS, 1.0), MAX_FACTOR)


class StepFailed(GatewayError):
    """A lab step missed its deadline or failed; says which, and shows the logs."""

    def __init__(self, step: str, reason: str, logs: str = "") -> None:
        self.step = step
        self.reason = reason
        self.logs = logs
        super().__init__(f"step {step!r} failed: {reason}" + (f"\n{logs}" if logs else ""))


Report = Callable[[dict[str, object]], None]


def _ignore(record: dict[str, object]) -> None:
    pass


@dataclass
class Pace:
    """The slowness factor of this machine and the budgets derived from it.

    `report` receives one record per step event ({"step", "event": start|done|extend|
    fail, "budget", "elapsed", "factor", "text"}); the VM lab forwards them to the host.
    """

    factor: float = 1.0
    report: Report = _ignore
    measure: Callable[[], float] = field(default=measure_factor, repr=False)

    @classmethod
    def measured(cls, report: Report = _ignore) -> Pace:
        """Measure this machine now; reports a `calibrated` record."""
        started = time.monotonic()
        pace = cls(report=report)
        pace.factor = pace.measure()
        report(
            {
                "step": "calibrate",
                "event": "calibrated",
                "factor": round(pace.factor, 1),
                "elapsed": round(time.monotonic() - started, 2),
            }
        )
        return pace

    def budget(self, reference_seconds: float, factor: float | None = None) -> float:
        """Wall seconds allowed here for work that takes `reference_seconds` there."""
        return max(FLOOR_SECONDS, reference_seconds * (self.factor if factor is None else factor))

    def deadline(self, step: str, reference_seconds: float) -> Deadline:
        return Deadline(self, step, reference_seconds)

    @contextmanager
    def step(self, step: str, text: str, reference_seconds: float) -> Iterator[Deadline]:
        """Run one named step: reports its start and end; a failure inside names it."""
        deadline = self.deadline(step, reference_seconds)
        self.report(
            {
                "step": step,
                "event": "start",
                "text": text,
                "budget": round(deadline.budget),
                "factor": round(self.factor, 1),
            }
        )
        try:
            yield deadline
        except StepFailed as exc:
            self.report(
                {
                    "step": exc.step,
                    "event": "fail",
                    "text": exc.reason,
                    "elapsed": round(deadline.elapsed()),
                }
            )
            raise
        except (GatewayError, OSError, subprocess.SubprocessError) as exc:
            # whatever broke inside the step: the failure names it
            self.report(
                {
                    "step": step,
                    "event": "fail",
                    "text": str(exc),
                    "elapsed": round(deadline.elapsed()),
                }
            )
            raise StepFailed(step, str(exc) or type(exc).__name__) from exc
        self.report({"step": step, "event": "done", "elapsed": round(deadline.elapsed(), 1)})


class Deadline:
    """The end of one step's budget; re-measures the machine before it gives up."""

    def __init__(self, pace: Pace, step: str, reference_seconds: float) -> None:
        self.pace = pace
        self.step = step
        self.reference_seconds = reference_seconds
        self.started = time.monotonic()
        self.budget = pace.budget(reference_seconds)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return max(self.budget - self.elapsed(), 0.0)

    def expired(self) -> bool:
        """True once the budget is spent and the machine is not slower than assumed."""
        if self.elapsed() < self.budget:
            return False
        slower = self.pace.measure()
        self.pace.factor = slower
        longer = self.pace.budget(self.reference_seconds, slower)
        if longer > self.budget * 1.1 and self.elapsed() < longer:
            self.budget = longer
            self.pace.report(
                {
                    "step": self.step,
                    "event": "extend",
                    "budget": round(longer),
                    "factor": round(slower, 1),
                }
            )
            return False
        return True

    def fail(self, reason: str, logs: str = "") -> StepFailed:
        """The error for this step running out: its budget, the factor, the logs."""
        return StepFailed(
            self.step,
            f"{reason} (waited {self.elapsed():.0f} s of a {self.budget:.0f} s budget: "
            f"{self.reference_seconds:g} reference s x {self.pace.factor:.1f}, the measured "
            f"slowness of this machine, and at least {FLOOR_SECONDS:g} s)",
            logs,
        )


def describe(record: dict[str, object]) -> str | None:
    """The progress line a person sees for one record (None: nothing to show)."""
    where = "  vm: " if record.get("where") == "vm" else "lab: "
    event = record.get("event")
    if event == "calibrated":
        return (
            f"{where}measured slowness {record.get('factor')} (1 = an idle reference "
            "machine); every wait below scales with it"
        )
    if event == "start":
        return f"{where}{record.get('text')} (up to {record.get('budget')} s)"
    if event == "extend":
        return (
            f"{where}{record.get('step')}: slower than assumed (now {record.get('factor')}); "
            f"waiting up to {record.get('budget')} s"
        )
    if event == "note":
        return f"{where}{record.get('text')}"
    return None
