"""The backend process: start it, talk docs/protocol.md to it, notice when it dies or hangs.

Plain Python (no bpy), so it runs and is tested anywhere. The backend runs in its
own Python environment (torch, transformers) as a subprocess: requests go to its
stdin, one JSON object per line; a reader thread parses its stdout into a queue
that `poll()` drains without blocking; its stderr goes to a log file whose tail
explains a crash.

Management, all driven from `poll()` (the jobs call it every pump):
- one work request at a time: `send()` writes a work request at once when none
  runs, else keeps it in a local queue and writes it when the running one ends
  (so a cancel, a crash or a hang concerns exactly one request);
- hung detection: while a work request runs and nothing arrives for
  `hang_timeout` seconds the client pings; no `pong` within `pong_timeout` (or no
  handshake within `load_timeout` of the start) means hung: the process is killed
  and one `error` event (`backend_hung`, id null) says so with the log's tail;
- a dead or hung backend is restarted by the next request (`ensure_started`).

`registry.client_for(settings)` keeps one client per configuration (python, model
folder, device, precision), so a second Generate reuses the loaded model.
"""
from __future__ import annotations

import collections
import hashlib
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ..core import manifest, protocol
from .base import Backend, BackendError

FIX_PYTHON = ("set it in Preferences > Add-ons > IRG Motion > Backend Python "
              "(the python of the backend environment, e.g. .venv-backend/bin/python), "
              "or run `make envs` to build that environment")
FIX_MODEL = ("convert a checkpoint with `irg-motion convert`, or build a test model with "
             "`python -m model_backend make-fixture DIR`, then set Preferences > Add-ons > "
             "IRG Motion > Model Folder")

STATES = ("stopped", "starting", "ready", "dead")
HANG_TIMEOUT_S = 30.0    # silence while a request runs before the client pings
PONG_TIMEOUT_S = 15.0    # a ping unanswered this long means hung
LOAD_TIMEOUT_S = 900.0   # loading 5 GB of weights from a slow disk stays well under this
LOG_MAX_BYTES = 4 << 20  # a log larger than this is started afresh


def validate_python(python: str | os.PathLike | None) -> Path:
    """The backend Python as a Path; BackendError naming the fix if it cannot run."""
    if not python or not str(python).strip():
        raise BackendError(f"The backend Python is not set: {FIX_PYTHON}.")
    path = Path(python).expanduser()
    if not path.exists():
        raise BackendError(f"The backend Python {path} does not exist: {FIX_PYTHON}.")
    if path.is_dir():
        raise BackendError(f"The backend Python {path} is a folder, not a Python executable "
                           f"(for a virtual environment pick its bin/python): {FIX_PYTHON}.")
    if not os.access(path, os.X_OK):
        raise BackendError(f"The backend Python {path} is not executable: {FIX_PYTHON}.")
    return path


def validate_model_dir(model_dir: str | os.PathLike | None) -> Path:
    """The model folder as a Path; BackendError naming the fix if it is not a complete model folder."""
    if not model_dir or not str(model_dir).strip():
        raise BackendError(f"The model folder is not set and this installation has no demo model: {FIX_MODEL}.")
    path = Path(model_dir).expanduser()
    try:
        manifest.read_manifest(path)
    except manifest.ModelFolderError as exc:
        raise BackendError(f"The {exc}. Then set Preferences > Add-ons > IRG Motion > Model Folder.") from None
    return path


def diagnose_exit(python: Path, returncode: int | None, tail: str) -> str:
    """A sentence explaining why the backend stopped, from its exit status and log tail."""
    if "No module named 'model_backend'" in tail or "No module named model_backend" in tail:
        return (f"The Python at {python} does not have the IRG Motion backend installed "
                f"(No module named model_backend): {FIX_PYTHON}.")
    for package in ("torch", "transformers", "safetensors", "numpy"):
        if f"No module named '{package}'" in tail:
            return (f"The Python at {python} lacks {package}, so it is not the backend environment: "
                    f"{FIX_PYTHON}.")
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return (f"The backend process was killed by signal {-returncode} ({name}): by the system (out of "
                "memory?) or by another program. Generate again to restart it; if it happens again, use a "
                "smaller precision (nf4) or the CPU device.")
    return (f"The backend process stopped (exit status {returncode}). "
            "Its log below says why; check the model folder and device settings, then generate again "
            "to restart it.")


def _done_cancelled(request_id: Any) -> dict[str, Any]:
    """The `done` the backend sends for a cancelled queued request (docs/protocol.md)."""
    return {"event": "done", "id": request_id, "motions": 0, "stop_reason": "cancelled",
            "tokens_generated": 0, "elapsed_s": 0.0, "warnings": []}


class BackendClient(Backend):
    """One backend subprocess speaking the JSON-lines protocol over stdin/stdout."""

    def __init__(self, python: str | os.PathLike, model_dir: str | os.PathLike,
                 device: str = "auto", precision: str = "auto",
                 log_path: str | os.PathLike | None = None):
        super().__init__()
        self.python = Path(python).expanduser() if python else Path("")
        self.model_dir = Path(model_dir).expanduser() if model_dir else Path("")
        self.device = device
        self.precision = precision
        self.log_path = Path(log_path) if log_path else default_log_path(self.key)
        self.hang_timeout = HANG_TIMEOUT_S
        self.pong_timeout = PONG_TIMEOUT_S
        self.load_timeout = LOAD_TIMEOUT_S
        self.restarts = 0  # how many times a dead backend was started again
        self.watchdog_pings = 0  # pings sent because a request went quiet
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._log_offset = 0
        self._reset_requests()

    def _reset_requests(self) -> None:
        """Forget the running and queued requests and the watchdog (a new or stopped process)."""
        self._inflight: str | None = None
        self._inflight_since = 0.0
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._pings: dict[str, threading.Event] = {}
        self._watch_ping: str | None = None
        self._watch_ping_at = 0.0
        self._last_event_at = time.monotonic()
        self._started_at = time.monotonic()

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies this backend in the registry."""
        return registry_key(self.python, self.model_dir, self.device, self.precision)

    @property
    def pid(self) -> int | None:
        """The backend's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._state in ("starting", "ready") else None

    @property
    def busy(self) -> bool:
        """True while a work request runs or waits in the local queue."""
        return self._inflight is not None or bool(self._pending)

    @property
    def queued(self) -> int:
        """Work requests waiting behind the running one."""
        return len(self._pending)

    def validate(self) -> None:
        """Check the Python and the model folder before spawning anything (BackendError)."""
        validate_python(self.python)
        validate_model_dir(self.model_dir)

    def command(self) -> list[str]:
        """The command line that starts the backend."""
        return [str(self.python), "-u", "-m", "model_backend", "serve", "--stdio",
                "--model", str(self.model_dir), "--device", self.device, "--precision", self.precision]

    def start(self) -> None:
        """Validate, then spawn the backend; the `ready` handshake arrives later via poll()."""
        self.validate()
        if self._state == "dead":
            self.restarts += 1
        self.stop()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONHOME", None)  # Blender's PYTHONHOME would break another Python
        with self._open_log() as log:
            try:
                # cwd is the log folder so `-m` never picks up packages from Blender's cwd.
                self._proc = subprocess.Popen(
                    self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    cwd=str(self.log_path.parent), env=env)
            except OSError as exc:
                self._state = "dead"
                raise BackendError(f"Could not start the backend Python {self.python} ({exc}): {FIX_PYTHON}.") from None
        self._events = queue.Queue()
        self._ready_event = threading.Event()
        self.ready_info = None
        self.returncode = None
        self._reset_requests()
        self._state = "starting"
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True,
                                        name="irg-motion-backend-reader")
        self._reader.start()

    def _open_log(self):
        """The log opened for appending a new run (a header line marks it); started afresh when large.

        Earlier runs stay above, so "Show backend log" still shows why a previous one died."""
        try:
            too_big = self.log_path.stat().st_size > LOG_MAX_BYTES
        except OSError:
            too_big = False
        log = open(self.log_path, "wb" if too_big else "ab")
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"=== {stamp} starting the backend: {' '.join(self.command())}\n".encode())
        log.flush()
        self._log_offset = log.tell()
        return log

    def ensure_started(self) -> None:
        """Start the backend unless it is already starting or ready (reuses the process)."""
        if self._state in ("starting", "ready") and self._proc is not None and self._proc.poll() is None:
            return
        self.start()

    def restart(self) -> None:
        """Stop the backend (whatever it was doing) and start a new one."""
        self.stop()
        self.start()

    def send(self, request: dict[str, Any]) -> str:
        """Send one request (an `id` is added if missing); returns its id.

        A work request waits in the local queue while another one runs; a `cancel` of a
        queued request drops it and answers `done` (cancelled) like the backend would."""
        if self._proc is None or self._proc.stdin is None or self._state not in ("starting", "ready"):
            raise BackendError(f"The backend is not running (state {self._state}): generate again to restart it.")
        request = dict(request)
        request.setdefault("id", self.new_id())
        kind = request.get("type")
        if kind in protocol.WORK_TYPES:
            if self._inflight is None:
                self._write_work(request)
            else:
                self._pending.append(request)
        elif kind == "cancel" and self._drop_pending(request.get("target")):
            pass
        else:
            self._write(request)
        return request["id"]

    def _write(self, request: dict[str, Any]) -> None:
        line = (protocol.dumps(request) + "\n").encode("utf-8")
        proc = self._proc
        try:
            with self._lock:
                proc.stdin.write(line)
                proc.stdin.flush()
        except (AttributeError, BrokenPipeError, OSError, ValueError):
            # The reader thread reports the death with the log tail; nothing more to say here.
            raise BackendError("The backend process closed its input: it has stopped. "
                               + self.death_message()) from None

    def _write_work(self, request: dict[str, Any]) -> None:
        self._write(request)
        self._inflight = request["id"]
        self._inflight_since = time.monotonic()

    def _drop_pending(self, target: Any) -> bool:
        for request in self._pending:
            if request["id"] == target:
                self._pending.remove(request)
                self._events.put(_done_cancelled(target))
                return True
        return False

    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        """Up to max_events parsed events, without blocking; also runs the queue and the watchdog."""
        self._watch()
        out: list[dict[str, Any]] = []
        while len(out) < max_events:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            self._track(event)
            out.append(event)
        return out

    def _track(self, event: dict[str, Any]) -> None:
        """Keep one request running: the next queued one goes out when the running one ends."""
        kind, event_id = event.get("event"), event.get("id")
        if event_id is None and kind == "error" and self._state == "dead":
            self._inflight = None
            for request in self._pending:  # they were never sent: each gets the same answer
                self._events.put(protocol.error_event(event.get("code", "backend_exited"),
                                                      str(event.get("message", "")), request["id"]))
            self._pending.clear()
        elif kind in ("done", "error") and event_id is not None and event_id == self._inflight:
            self._inflight = None
            while self._pending and self._inflight is None:
                request = self._pending.popleft()
                try:
                    self._write_work(request)
                except BackendError as exc:
                    self._events.put(protocol.error_event("backend_exited", str(exc), request["id"]))

    # -- watchdog --------------------------------------------------------------------

    def _watch(self) -> None:
        """Declare the backend hung when it neither loads nor answers (see the module docstring)."""
        now = time.monotonic()
        if self._state == "starting" and self._proc is not None and now - self._started_at > self.load_timeout:
            self._hung(f"it did not finish loading the model within {self.load_timeout:g} s")
            return
        if self._state != "ready" or self._inflight is None:
            self._watch_ping = None
            return
        if self._watch_ping is not None:
            answered = self._pings.get(self._watch_ping)
            if answered is not None and answered.is_set():
                self._pings.pop(self._watch_ping, None)
                self._watch_ping = None  # alive, just slow: the pong reset the quiet time
            elif now - self._watch_ping_at > self.pong_timeout:
                quiet = now - max(self._last_event_at, self._inflight_since)
                self._hung(f"nothing came for {quiet:.0f} s while it was working on a request, and it did not "
                           f"answer a ping within {self.pong_timeout:g} s")
            return
        if now - max(self._last_event_at, self._inflight_since) > self.hang_timeout:
            ping_id = self.new_id("watchdog-")
            self._pings[ping_id] = threading.Event()
            try:
                self._write({"type": "ping", "id": ping_id})
            except BackendError:
                return  # it is dying: the reader reports that
            self._watch_ping, self._watch_ping_at = ping_id, now
            self.watchdog_pings += 1

    def _hung(self, why: str) -> None:
        """Kill a backend that stopped answering; one `error` event (id null) says so."""
        proc = self._proc
        pid = proc.pid if proc is not None else None
        self._state = "dead"  # before the kill: the reader then adds no second error
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        self.returncode = proc.returncode if proc is not None else None
        message = (f"The backend (pid {pid}) stopped answering: {why}. It was stopped; generate again to "
                   "restart it. If this happens again, check the device and memory settings and the log.")
        tail = self.log_tail(12)
        if tail:
            message += f"\nLast lines of the backend log ({self.log_path}):\n{tail}"
        self._events.put(protocol.error_event("backend_hung", message, None))
        self._ready_event.set()

    def ping(self, timeout: float = 5.0) -> float:
        """Round-trip time of a `ping` in seconds; BackendError when not ready or no `pong` in time."""
        if self._state != "ready":
            what = "still loading the model" if self._state == "starting" else self._state
            raise BackendError(f"The backend is not ready ({what}): wait for it, or generate to start it.")
        ping_id = self.new_id("ping-")
        answered = self._pings[ping_id] = threading.Event()
        started = time.monotonic()
        try:
            self._write({"type": "ping", "id": ping_id})
            if not answered.wait(timeout):
                raise BackendError(f"The backend (pid {self.pid}) did not answer a ping within {timeout:g} s: "
                                   "it is busy with a long step or hung. Wait, or press Restart.")
        finally:
            self._pings.pop(ping_id, None)
        return time.monotonic() - started

    def wait_ready(self, timeout: float = 600.0) -> dict[str, Any]:
        """Block until the handshake (for scripts and tests); BackendError on failure.

        Events other than the handshake stay queued for poll()."""
        self.ensure_started()
        if self._reader is not None:
            self._ready_event.wait(timeout)
        if self._state == "ready" and self.ready_info is not None:
            return self.ready_info
        if self._state == "dead":
            raise BackendError(self.death_message())
        raise BackendError(f"The backend did not become ready within {timeout:.0f} s; see its log {self.log_path}.")

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the backend to exit, then terminate or kill it if it lingers."""
        proc, self._proc = self._proc, None
        self._reset_requests()
        if proc is None:
            self._state = "stopped"
            return
        if proc.poll() is None:
            try:
                with self._lock:
                    proc.stdin.write((protocol.dumps({"type": "shutdown", "id": "shutdown"}) + "\n").encode())
                    proc.stdin.flush()
            except (OSError, ValueError):
                pass
            for ender in (None, proc.terminate, proc.kill):
                if ender is not None:
                    ender()
                try:
                    proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)  # it sees end-of-file once the process is gone
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError):
                pass
        self.returncode = proc.returncode
        self._state = "stopped"

    def log_tail(self, n: int = 20) -> str:
        """The last n lines the current (or last) backend process wrote to its log ('' if none)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(self._log_offset, fh.tell() - 64_000))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:]) if n > 0 else ""

    def death_message(self) -> str:
        """Why the backend died and how to fix it, with the tail of its log."""
        tail = self.log_tail(12)
        text = diagnose_exit(self.python, self.returncode, tail)
        if tail:
            text += f"\nLast lines of the backend log ({self.log_path}):\n{tail}"
        return text

    def status_text(self) -> str:
        """One line for the panel: state, process, model and queue."""
        if self._state == "ready":
            info = self.ready_info or {}
            model, device = info.get("model") or {}, info.get("device") or {}
            text = (f"Ready (pid {self.pid}): {model.get('name', '?')} on {device.get('type', '?')} "
                    f"({device.get('precision', '?')})")
            if self.busy:
                text += f", working; {self.queued} queued"
            return text
        if self._state == "starting":
            return f"Loading the model (pid {self.pid})..."
        if self._state == "dead":
            return "Stopped unexpectedly: the next request restarts it (Show Log says why)."
        return "Not running: it starts on the first request."

    # -- reader thread -------------------------------------------------------------

    def _read(self, proc: subprocess.Popen) -> None:
        """Parse stdout lines into events until the pipe closes, then report the exit."""
        try:
            for raw in proc.stdout:
                try:
                    event = protocol.loads(raw)
                except protocol.ProtocolError:
                    continue  # a stray print on stdout is not an event
                if proc is self._proc:
                    self._last_event_at = time.monotonic()
                kind = event.get("event")
                if kind == "pong" and event.get("id") in self._pings:
                    self._pings[event["id"]].set()  # our own ping: nobody else waits for it
                    continue
                if kind == "ready":
                    self._handshake(proc, event)
                self._events.put(event)
        except (OSError, ValueError):  # stop() closed the pipe under us
            pass
        returncode = proc.wait()
        if proc is self._proc:  # not stopped on purpose (stop() forgets the process first)
            self.returncode = returncode
            if self._state != "dead":  # a refused handshake or the watchdog has already said why
                self._state = "dead"
                self._events.put(protocol.error_event("backend_exited", self.death_message(), None,
                                                      returncode=returncode))
        self._ready_event.set()

    def _handshake(self, proc: subprocess.Popen, event: dict[str, Any]) -> None:
        """Accept a `ready` of our protocol version; anything else stops the backend."""
        version = event.get("protocol_version")
        if version == protocol.PROTOCOL_VERSION:
            self.ready_info = event
            self._state = "ready"
            self._ready_event.set()
            return
        self._state = "dead"
        self._events.put(protocol.error_event(
            "protocol_mismatch",
            f"The backend at {self.python} speaks protocol version {version}, this add-on speaks "
            f"{protocol.PROTOCOL_VERSION}: install the add-on and the backend from the same release "
            "(update the backend environment with `make envs`).", None))
        proc.terminate()
        self._ready_event.set()


# -- where a configuration's log goes ------------------------------------------------

def registry_key(python, model_dir, device: str, precision: str) -> tuple[str, str, str, str]:
    """Normalised (python, model folder, device, precision)."""
    def norm(p) -> str:
        return os.path.abspath(os.path.expanduser(str(p))) if p and str(p).strip() else ""
    return norm(python), norm(model_dir), device, precision


def default_log_path(key: tuple[str, ...]) -> Path:
    """A per-configuration log file in the temp folder (stable across restarts)."""
    digest = hashlib.sha1("|".join(key).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "irg-motion" / f"backend-{os.getpid()}-{digest}.log"
