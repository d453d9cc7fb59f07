"""The real stdio backend (`python -m model_backend serve --stdio`) as a subprocess for the
tests: raw lines in, events out, optionally under an address-space limit, its peak memory,
and the health check every hostile case ends with (a `ping` answered and a normal direct
generation served). Used by the server tests, the hardening tests and the fuzz harness.
Imported as `hostile` (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import json
import queue
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from serve_process import ROOT, backend_env, stop_process

STARTUP_S = 120.0
STEP_S = 30.0
# The fixture backend maps about 1 GB of address space and touches about 0.4 GB. 3 GiB of
# address space lets it work normally and turns a runaway allocation into a quick failure
# (MemoryError inside the process) instead of the kernel killing the machine's other jobs.
MEMORY_LIMIT = 3 << 30


def peak_memory_kb(pid: int) -> int:
    """A live process's peak resident memory (VmHWM, kB); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def limit_memory(limit: int) -> Callable[[], None]:
    """A preexec_fn: cap the child's address space at `limit` bytes (RLIMIT_AS)."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


class StdioServer:
    """`python -m model_backend serve --stdio --model DIR ARGS...` with a reader thread.

    Lines go in raw (bytes, so broken UTF-8 and surrogate escapes reach the server as sent);
    events come out parsed, and any stdout line that is not one JSON object is recorded.
    `prelude`: Python run in the server process before the entry point. `wait_ready`: read
    the `ready` handshake (into `ready`) before returning.
    """

    def __init__(self, python: Path, model_dir: Path, *args: str, memory_limit: int | None = MEMORY_LIMIT,
                 prelude: str | None = None, wait_ready: bool = True):
        cli = ["serve", "--stdio", "--model", str(model_dir), *(args or ("--device", "cpu"))]
        if prelude is None:
            cmd = [str(python), "-m", "model_backend", *cli]
        else:  # run some code in the server process first, then the same entry point
            cmd = [str(python), "-c", prelude + "\nimport runpy, sys\nsys.argv = ['model_backend'] + "
                   + repr(cli) + "\nrunpy.run_module('model_backend', run_name='__main__')"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=backend_env(), cwd=ROOT,
                                     preexec_fn=limit_memory(memory_limit) if memory_limit else None)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.bad_lines: list[bytes] = []
        self._stderr: list[bytes] = []
        self.peak_kb = 0
        self.ready: dict[str, Any] | None = None
        threading.Thread(target=self._read, daemon=True).start()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if wait_ready:
            self.ready = self.next(STARTUP_S)
            assert self.ready is not None and self.ready["event"] == "ready", self.ready

    def _read(self) -> None:
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
                assert isinstance(event, dict) and raw.endswith(b"\n")
            except (ValueError, AssertionError):
                self.bad_lines.append(raw)
                continue
            self.events.put(event)
        self.events.put(None)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-2000]

    @property
    def stderr(self) -> bytes:
        """Its stderr (the last 2000 lines); complete once the process has ended."""
        if self.proc.poll() is not None:
            self._drainer.join(STEP_S)
        return b"".join(self._stderr)

    def log(self) -> str:
        return b"".join(self._stderr[-40:]).decode("utf-8", "replace")

    def send_line(self, line: bytes | str) -> None:
        """One raw line (a newline is added)."""
        data = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def send(self, request: dict[str, Any] | str) -> None:
        """One request (a dict, sent as JSON) or one line of text as it is."""
        self.send_line(request if isinstance(request, str) else json.dumps(request))

    def next(self, timeout: float = STEP_S) -> dict[str, Any] | None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s; the server's log:\n{self.log()}") from None
        assert not self.bad_lines, f"stdout carried lines that are not JSON objects: {self.bad_lines[:3]!r}"
        return event

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = STEP_S) -> list[dict[str, Any]]:
        """Events up to and including the first matching `predicate`."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            event = self.next(max(0.1, deadline - time.monotonic()))
            assert event is not None, f"stdout closed (exit {self.proc.poll()}); last events {seen[-3:]}\n{self.log()}"
            seen.append(event)
            if predicate(event):
                return seen

    def finished(self, rid: Any, timeout: float = STEP_S) -> list[dict[str, Any]]:
        """Every event up to the end (done/error) of request `rid`."""
        return self.until(lambda e: e.get("id") == rid and e["event"] in ("done", "error"), timeout)

    def memory_kb(self) -> int:
        """The process's peak resident memory so far (VmHWM, kB); also kept in `peak_kb`."""
        self.peak_kb = max(self.peak_kb, peak_memory_kb(self.proc.pid))
        return self.peak_kb

    def check_healthy(self, tag: str = "health") -> None:
        """The server still answers `ping` and serves a normal direct generation."""
        assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}:\n{self.log()}"
        self.memory_kb()
        self.send({"type": "ping", "id": f"{tag}-ping"})
        self.until(lambda e: e["event"] == "pong" and e.get("id") == f"{tag}-ping")
        rid = f"{tag}-gen"
        self.send({"type": "generate", "id": rid, "prompt": "a person jumps", "mode": "direct",
                   "max_motion_tokens": 4})
        events = [e for e in self.finished(rid) if e.get("id") == rid]
        assert events[-1]["event"] == "done", events[-1]
        assert [e["event"] for e in events].count("motion") == 1

    def close(self) -> int:
        """Close stdin (the clean end), else kill; the return code."""
        def ask() -> None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.memory_kb()
        return stop_process(self.proc, ask, STEP_S)
