"""The backend server as a subprocess for the tests: its environment, the HTTP server
(`python -m model_backend serve --http 127.0.0.1:0`) and the URL it printed, a token file,
and stopping a process. Imported as `serve_process` (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 90.0
STEP_S = 20.0


def backend_env(**extra: str) -> dict[str, str]:
    """This environment for a backend process: one thread, offline hubs, no server token
    inherited from the user's shell (a test passes the token it means)."""
    env = {k: v for k, v in os.environ.items() if k != "IRG_SERVER_TOKEN"}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def stop_process(proc: subprocess.Popen, ask: Callable[[], None], timeout: float = STEP_S) -> int:
    """Ask a running process to end (`ask`), kill it when it has not after `timeout` s; its return code."""
    if proc.poll() is None:
        ask()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def write_token_file(folder: Path, text: str) -> Path:
    """token.txt in `folder`, readable by its owner only (the server refuses other modes)."""
    path = folder / "token.txt"
    path.write_text(text)
    path.chmod(0o600)
    return path


class HttpServer:
    """`python -m model_backend serve --http 127.0.0.1:0 --model DIR --device cpu ARGS...` and the URL it
    printed (`listening on http://127.0.0.1:PORT`); its stderr is kept in `log`."""

    def __init__(self, python: Path, model_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [str(python), "-m", "model_backend", "serve", "--http", "127.0.0.1:0", "--model", str(model_dir),
             "--device", "cpu", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env or backend_env(), cwd=ROOT)
        self.log: list[str] = []
        self.url: str | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._listening.wait(STARTUP_S) or self.url is None:
            self.proc.kill()
            raise AssertionError("the server did not print `listening on`:\n" + "".join(self.log[-30:]))

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.log.append(line)
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                self._listening.set()
        self._listening.set()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def text(self) -> str:
        return "".join(self.log)

    def wait_log(self, needle: str, timeout: float = STEP_S) -> str:
        """The first log line holding `needle` (AssertionError when none comes within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line with {needle!r} within {timeout} s:\n" + "".join(self.log[-20:]))

    def end(self) -> int:
        """SIGTERM (a clean shutdown), else kill; the return code."""
        return stop_process(self.proc, lambda: self.proc.send_signal(signal.SIGTERM))
