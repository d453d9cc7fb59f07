"""Running a SubprocessJob (backend setup, model conversion) to its end as the add-on's timer
would. Imported as `job_runs` (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import time
from typing import Callable

import pytest


def run_job(job, timeout: float, max_lines: int = 20000,
            while_running: Callable | None = None) -> list[tuple[float, str]]:
    """start() and pump(max_lines) until the job ends; (progress, stage) after each pump. A job
    still running after `timeout` s is cancelled and the test fails with its log's end."""
    job.start()
    samples = [(job.progress, job.stage)]
    deadline = time.monotonic() + timeout
    while job.pump(max_lines=max_lines):
        samples.append((job.progress, job.stage))
        if while_running is not None:
            while_running(job)
        if time.monotonic() > deadline:
            job.cancel(wait=True)
            pytest.fail(f"{type(job).__name__} still running after {timeout} s at {job.stage!r}:\n"
                        f"{job.log_tail(20)}")
        time.sleep(0.02)
    samples.append((job.progress, job.stage))
    return samples


def pump_to_end(job, timeout: float) -> None:
    """pump() until the job ends (e.g. after cancel()); fails after `timeout` s with its log's end."""
    deadline = time.monotonic() + timeout
    while job.pump():
        assert time.monotonic() < deadline, job.log_tail(20)
        time.sleep(0.02)
