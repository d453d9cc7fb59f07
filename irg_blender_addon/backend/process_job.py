"""A job made of subprocess steps, run without freezing Blender: the runner under Set up backend
(setup.BackendSetupJob) and Convert model (convert.ConvertJob).

A subclass yields `Step`s from `_plan()` and gets each step's `StepResult` back; `pump()`
reads what the running step printed so far and returns at once, so a `bpy.app.timers`
function (or a test, since timers never run headless) drives the job. `cancel()`
interrupts the step's process group, then kills it. Plain Python: no bpy, no torch
(runs in Blender's Python 3.11).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Generator

__all__ = ["JobError", "Step", "StepResult", "LineParser", "SubprocessJob", "Plan", "last_error_line"]

LOG_LINES = 500
STEP_TAIL = 60
CANCEL_GRACE = 5.0  # seconds between the polite interrupt and the kill
EOF_GRACE = 5.0  # a child that left the pipe open after its parent exited is not waited for


class JobError(Exception):
    """A problem the user can fix; the message names it and the fix."""


# ---------------------------------------------------------------- the step runner

class LineParser:
    """Reads one step's output lines: returns the step's completed fraction (0..1) or None.

    `stage` (when set) replaces the job's stage text, `detail` is a short status shown under it."""

    stage: str | None = None
    detail: str = ""

    def feed(self, line: str) -> float | None:
        return None


@dataclass
class Step:
    """One subprocess of a job.

    `start`/`end` is the part of the job's progress this step covers. A non-zero exit fails
    the job when `check` is true (the error says `fix`); otherwise the plan reads the result.
    `env` adds to (or, with None values, removes from) the job's environment. Lines matching
    `hide` are parsed but not kept in the log (pip's byte counters)."""

    stage: str
    argv: list[str]
    start: float
    end: float
    fix: str = ""
    check: bool = True
    env: dict[str, str | None] = field(default_factory=dict)
    parser: LineParser | None = None
    hide: re.Pattern[str] | None = None


@dataclass
class StepResult:
    """How a step ended: exit status (None: it could not start) and its last output lines."""

    returncode: int | None
    tail: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Plan = Generator[Step, StepResult, None]


class SubprocessJob:
    """A sequence of subprocesses, pumped without blocking.

    Subclasses implement `_validate()` (raise JobError before anything is spawned) and
    `_plan()`, a generator that yields Steps and receives each one's StepResult, so the
    sequence is written as plain code; cleanup belongs in its `finally` (a failure or a
    cancel closes the generator). The plan sets `result` before it returns.

    Contract for the UI: `start()`, then `pump()` from a timer until it returns False; then
    `state` is "done" (`result` set), "failed" (`error`: the step, the problem, the fix and
    the log tail) or "cancelled". `start()` never raises for bad input: the job fails at
    once with the message in `error`.
    """

    def __init__(self) -> None:
        self.state = "new"  # new, running, done, failed, cancelled
        self.progress = 0.0
        self.stage = ""
        self.detail = ""
        self.result: str | None = None
        self.error: str | None = None
        self.warnings: list[str] = []
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._plan_gen: Plan | None = None
        self._step: Step | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lines: SimpleQueue[str | None] = SimpleQueue()
        self._tail: deque[str] = deque(maxlen=STEP_TAIL)
        self._eof = False
        self._exited_at: float | None = None
        self._kill_at: float | None = None
        self._cwd: str | None = None

    # -- public --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def pid(self) -> int | None:
        """Process id of the running step's subprocess."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Validate the inputs and start the first step (a job runs once)."""
        if self.state != "new":
            raise RuntimeError(f"this job has already run (state {self.state}); make a new one")
        self.state = "running"
        try:
            self._validate()
        except JobError as exc:
            self._finish("failed", error=str(exc))
            return
        self._cwd = tempfile.mkdtemp(prefix="irg-job-")  # private and empty: `-m` finds nothing planted here
        self._plan_gen = self._plan()
        self._advance(None)

    def pump(self, max_lines: int = 20000) -> bool:
        """Handle what the subprocess printed so far, move to the next step when it ended.

        Never blocks; returns True while the job runs."""
        if not self.running:
            return False
        self._drain(max_lines)
        proc = self._proc
        if proc is None:
            return self.running
        ended = proc.poll() is not None
        if self._kill_at is not None:  # cancelling
            if ended:
                self._finish("cancelled")
            elif time.monotonic() >= self._kill_at:
                _signal_group(proc, kill=True)
            return self.running
        if ended and self._exited_at is None:
            self._exited_at = time.monotonic()
        if ended and (self._eof or time.monotonic() - self._exited_at > EOF_GRACE):
            self._step_ended(proc.returncode)
        return self.running

    def cancel(self, wait: bool = False) -> None:
        """Stop the job: interrupt the subprocess (killed if it lingers), clean up.

        Without `wait` this returns at once and pump() finishes the job ("cancelled");
        with it (add-on unregister) it blocks until the subprocess is gone."""
        if not self.running:
            return
        self.stage, self.detail = "Cancelling", ""
        if self._proc is None or self._proc.poll() is not None:
            self._finish("cancelled")
            return
        if self._kill_at is None:
            _signal_group(self._proc, kill=False)
            self._kill_at = time.monotonic() + CANCEL_GRACE
        while wait and self.pump():
            time.sleep(0.05)

    def log_tail(self, n: int = 20) -> str:
        """The last n lines the job's subprocesses printed (with the commands it ran)."""
        return "\n".join(list(self._log)[-n:]) if n > 0 else ""

    # -- for subclasses ------------------------------------------------------------

    def _validate(self) -> None:
        """Raise JobError naming a bad input and its fix; nothing has been spawned yet."""

    def _plan(self) -> Plan:
        raise NotImplementedError
        yield  # pragma: no cover - makes this a generator

    def _environment(self) -> dict[str, str]:
        """The environment of every step: this process's, without Blender's PYTHONHOME."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env.pop("PYTHONHOME", None)  # Blender's would break another Python
        return env

    def _step_failed(self, step: Step, result: StepResult) -> str:
        """The error message for a failed step: what failed, why, the fix, the log tail."""
        reason = last_error_line(result.tail)
        status = "it could not start" if result.returncode is None else f"exit status {result.returncode}"
        text = f"{step.stage} failed ({status})" + (f": {reason}" if reason else ".")
        if step.fix:
            text += f"\nFix: {step.fix}"
        return text + f"\n\nLast lines of the log:\n{self.log_tail(15)}"

    def _note(self, text: str) -> None:
        """A line of the job's own in the log."""
        self._log.append(f"# {text}")

    # -- internals -----------------------------------------------------------------

    def _advance(self, result: StepResult | None) -> None:
        """Ask the plan for the next step and spawn it (steps that cannot start go back to the plan)."""
        while self.running:
            try:
                step = self._plan_gen.send(result)  # type: ignore[union-attr]
            except StopIteration:
                self._finish("done")
                return
            except JobError as exc:
                self._finish("failed", error=str(exc))
                return
            except Exception as exc:  # a bug or an OS error between steps: say where
                self._finish("failed", error=f"{self.stage} failed: {exc!r}\n\nLast lines of the log:\n"
                                            f"{self.log_tail(15)}")
                return
            result = self._spawn(step)
            if result is None:
                return
            if not result.ok and step.check:
                self._finish("failed", error=self._step_failed(step, result))
                return

    def _spawn(self, step: Step) -> StepResult | None:
        """Start the step's subprocess; a StepResult only when it could not start."""
        self._step, self.stage, self.detail = step, step.stage, ""
        self.progress = max(self.progress, step.start)
        self._tail = deque(maxlen=STEP_TAIL)
        self._lines, self._eof, self._exited_at = SimpleQueue(), False, None
        env = self._environment()
        for key, value in step.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self._log.append("$ " + _show_command(step.argv))
        try:
            self._proc = subprocess.Popen(
                step.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                cwd=self._cwd, env=env, text=True, encoding="utf-8", errors="replace", **_group_options())
        except OSError as exc:
            self._log.append(f"could not start {step.argv[0]}: {exc}")
            return StepResult(None, [f"error: could not start {step.argv[0]}: {exc}"])
        threading.Thread(target=_read_lines, args=(self._proc, self._lines), daemon=True,
                         name=f"irg-job-{self._proc.pid}").start()
        return None

    def _drain(self, max_lines: int) -> None:
        step = self._step
        for _ in range(max_lines):
            try:
                line = self._lines.get_nowait()
            except Empty:
                return
            if line is None:
                self._eof = True
                return
            if not line.strip() or step is None:
                continue
            if step.parser is not None:
                fraction = step.parser.feed(line)
                self.detail = step.parser.detail
                if step.parser.stage:
                    self.stage = step.parser.stage
                if fraction is not None:
                    f = min(max(fraction, 0.0), 1.0)
                    self.progress = max(self.progress, step.start + (step.end - step.start) * f)
            if step.hide is None or not step.hide.match(line.strip()):
                self._log.append(line)
                self._tail.append(line)

    def _step_ended(self, returncode: int) -> None:
        self._drain(sys.maxsize)  # every line the step printed counts for its result
        step, proc = self._step, self._proc
        self._proc = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        result = StepResult(returncode, list(self._tail))
        if returncode == 0 and step is not None:
            self.progress = max(self.progress, step.end)
        if returncode != 0 and step is not None and step.check:
            self._finish("failed", error=self._step_failed(step, result))
            return
        self._advance(result)

    def _finish(self, state: str, error: str | None = None) -> None:
        """End the job: close the plan (its cleanup runs), stop any subprocess, remove the work folder."""
        self.state = state
        if self._plan_gen is not None:
            try:
                self._plan_gen.close()
            except Exception as exc:  # cleanup must not hide the outcome
                self._note(f"cleanup failed: {exc!r}")
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, kill=True)
            proc.wait()
        if self._cwd is not None:
            shutil.rmtree(self._cwd, ignore_errors=True)
        if state == "done":
            self.progress, self.stage, self.detail = 1.0, "Done", ""
        elif state == "cancelled":
            self.stage, self.detail = "Cancelled", ""
        self.error = error


def _read_lines(proc: subprocess.Popen[str], out: SimpleQueue[str | None]) -> None:
    """Reader thread: every output line into the queue (universal newlines split pip's and
    the converter's carriage-return redraws too), then None at end of file."""
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.put(line.rstrip("\n"))
    except (OSError, ValueError):  # the pipe was closed under us
        pass
    out.put(None)


def _group_options() -> dict:
    """Run each step in its own process group, so cancel reaches pip's own children too."""
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def _signal_group(proc: subprocess.Popen[str], kill: bool) -> None:
    """Interrupt (Ctrl-C: Python cleans up) or kill our subprocess and its process group."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            proc.kill() if kill else proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        pass


def _show_command(argv: list[str]) -> str:
    """A command for the log, long arguments (the check script) shortened."""
    return " ".join(a if len(a) <= 120 and "\n" not in a else f"'{a.splitlines()[0][:40]}...'" for a in argv)


def last_error_line(lines: list[str]) -> str:
    """The last line that states an error (pip's `ERROR: ...`, an exception, `...: error: ...`)."""
    pattern = re.compile(r"^(ERROR:|error:|\w*(Error|Exception)\b:?)|: error: ")
    for line in reversed(lines):
        if pattern.search(line.strip()):
            return line.strip()
    return ""
