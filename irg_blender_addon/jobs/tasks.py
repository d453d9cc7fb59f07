"""Tasks started from the preferences ("Set up backend", "Convert model...") and the timer that pumps them.

A task wraps a backend.process_job.SubprocessJob; on success it stores its result (the new
Python, the new model folder) in the preferences. Timers never run headless: tests and
scripts call `wait_task()` (or `tasks.pump()`).
"""
from __future__ import annotations

import atexit
import time
from typing import Callable

import bpy

from ..backend.process_job import SubprocessJob
from ..settings import addon_preferences

TASK_INTERVAL = 0.1


class PrefsTask:
    """A SubprocessJob started from the preferences; when it succeeds, `apply(result)` stores what
    it made and returns the message the preferences show."""

    def __init__(self, title: str, job: SubprocessJob, apply: Callable[[str], str]):
        self.title = title
        self.job = job
        self.apply = apply
        self.message = ""
        self.finished = False

    @property
    def running(self) -> bool:
        return self.job.running

    @property
    def error(self) -> str:
        return self.job.error or ""

    def start(self) -> None:
        self.job.start()
        self._settle()

    def pump(self) -> bool:
        """Pump the job; on its end store the result. True while it runs."""
        running = self.job.pump()
        self._settle()
        return running

    def cancel(self, wait: bool = False) -> None:
        self.job.cancel(wait=wait)
        self._settle()

    def _settle(self) -> None:
        if self.finished or self.job.running:
            return
        self.finished = True
        job = self.job
        if job.state == "done" and job.result:
            try:
                self.message = self.apply(job.result)
            except Exception as exc:  # storing the result must not lose it
                self.message = f"{self.title} finished ({job.result}), but it could not be stored: {exc}"
        elif job.state == "cancelled":
            self.message = f"{self.title} cancelled; nothing changed."
        if job.warnings:
            self.message += "\nWarnings: " + "; ".join(job.warnings)


class TaskRunner:
    """Holds the one preferences task (setup or convert) and the timer that pumps it."""

    def __init__(self):
        self.task: PrefsTask | None = None

    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def start(self, task: PrefsTask, *, timer: bool = True) -> PrefsTask:
        """Start the task (it fails at once, with its error, on bad input) and, in the UI, its timer."""
        if self.busy():
            raise RuntimeError(f"{self.task.title} is running: wait for it or cancel it first.")
        self.task = task
        task.start()
        if timer and task.running and not bpy.app.timers.is_registered(_tick_task):
            bpy.app.timers.register(_tick_task, first_interval=TASK_INTERVAL)
        return task

    def pump(self) -> bool:
        """What the timer does; True while the task runs."""
        return self.task.pump() if self.task is not None else False

    def cancel(self, wait: bool = False) -> None:
        if self.task is not None:
            self.task.cancel(wait=wait)

    def shutdown(self) -> None:
        """Stop the timer and the task's subprocess (add-on unregister, Blender quit)."""
        try:
            if bpy.app.timers.is_registered(_tick_task):
                bpy.app.timers.unregister(_tick_task)
        except (AttributeError, ReferenceError):  # bpy is going away at quit
            pass
        if self.busy():
            self.task.cancel(wait=True)


tasks = TaskRunner()
atexit.register(tasks.shutdown)


def _tick_task() -> float | None:
    try:
        running = tasks.pump()
    except Exception as exc:  # a timer that raises is dropped silently: end the task visibly
        if tasks.task is not None:
            tasks.task.cancel()
            tasks.task.message = f"Internal error: {exc!r}"
        running = False
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "VIEW_3D"):
                area.tag_redraw()
    return TASK_INTERVAL if running else None


def store(name: str, what: str) -> Callable[[str], str]:
    """An `apply` that stores the result in the preference `name`."""
    def apply(result: str) -> str:
        prefs = addon_preferences()
        if prefs is None:
            return f"{what}: {result}. Enable the add-on and set it in the preferences."
        setattr(prefs, name, result)
        return f"{what}: {result} (stored in the preferences)."
    return apply


def wait_task(timeout: float = 600.0) -> PrefsTask | None:
    """Pump the preferences task until it ends (scripts, tests); returns it."""
    deadline = time.monotonic() + timeout
    while tasks.pump():
        if time.monotonic() > deadline:
            tasks.cancel(wait=True)
            raise TimeoutError(f"{tasks.task.title} still running after {timeout:.0f} s")
        time.sleep(0.02)
    return tasks.task

