"""The backend process: start it, talk docs/protocol.md to it, notice when it dies.

Plain Python (no bpy), so it runs and is tested anywhere. The backend runs in its
own Python environment (torch, transformers) as a subprocess: requests go to its
stdin, one JSON object per line; a reader thread parses its stdout into a queue
that `poll()` drains without blocking; its stderr goes to a log file whose tail
explains a crash.

One client per (python, model folder, device, precision) lives in a module-level
registry (`get_client`), so a second Generate reuses the loaded model.
"""
from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .core import manifest, protocol

FIX_PYTHON = ("set it in Preferences > Add-ons > IRG Motion > Backend Python "
              "(the python of the backend environment, e.g. .venv-backend/bin/python), "
              "or run `make envs` to build that environment")
FIX_MODEL = ("convert a checkpoint with `irg-motion convert`, or build a test model with "
             "`python -m model_backend make-fixture DIR`, then set Preferences > Add-ons > "
             "IRG Motion > Model Folder")

STATES = ("stopped", "starting", "ready", "dead")


class BackendError(RuntimeError):
    """A backend problem with a message that names the problem and the fix."""


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
        raise BackendError(f"The model folder is not set: {FIX_MODEL}.")
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
    return (f"The backend process stopped (exit status {returncode}). "
            "Its log below says why; check the model folder and device settings.")


class BackendClient:
    """One backend subprocess speaking the JSON-lines protocol over stdin/stdout."""

    def __init__(self, python: str | os.PathLike, model_dir: str | os.PathLike,
                 device: str = "auto", precision: str = "auto",
                 log_path: str | os.PathLike | None = None):
        self.python = Path(python).expanduser() if python else Path("")
        self.model_dir = Path(model_dir).expanduser() if model_dir else Path("")
        self.device = device
        self.precision = precision
        self.log_path = Path(log_path) if log_path else default_log_path(self.key)
        self.ready_info: dict[str, Any] | None = None
        self.returncode: int | None = None
        self._state = "stopped"
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._ready_event = threading.Event()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies this backend in the registry."""
        return registry_key(self.python, self.model_dir, self.device, self.precision)

    @property
    def state(self) -> str:
        """'stopped', 'starting' (loading the model), 'ready' or 'dead'."""
        return self._state

    @property
    def pid(self) -> int | None:
        """The backend's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._state in ("starting", "ready") else None

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
        self.stop()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONHOME", None)  # Blender's PYTHONHOME would break another Python
        with open(self.log_path, "wb") as log:
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
        self._state = "starting"
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True,
                                        name="irg-motion-backend-reader")
        self._reader.start()

    def ensure_started(self) -> None:
        """Start the backend unless it is already starting or ready (reuses the process)."""
        if self._state in ("starting", "ready") and self._proc is not None and self._proc.poll() is None:
            return
        self.start()

    def new_id(self, prefix: str = "r") -> str:
        """A request id unique within this client."""
        return f"{prefix}{next(self._ids)}"

    def send(self, request: dict[str, Any]) -> str:
        """Write one request (an `id` is added if missing); returns its id."""
        if self._proc is None or self._proc.stdin is None or self._state not in ("starting", "ready"):
            raise BackendError(f"The backend is not running (state {self._state}): generate again to restart it.")
        request = dict(request)
        request.setdefault("id", self.new_id())
        line = (protocol.dumps(request) + "\n").encode("utf-8")
        try:
            with self._lock:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            # The reader thread reports the death with the log tail; nothing more to say here.
            raise BackendError("The backend process closed its input: it has stopped. "
                               + self.death_message()) from None
        return request["id"]

    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        """Up to max_events parsed events, without blocking."""
        out: list[dict[str, Any]] = []
        while len(out) < max_events:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        return out

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
        """The last n lines of the backend's stderr log ('' if there is none)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64_000))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def death_message(self) -> str:
        """Why the backend died and how to fix it, with the tail of its log."""
        tail = self.log_tail(12)
        text = diagnose_exit(self.python, self.returncode, tail)
        if tail:
            text += f"\nLast lines of the backend log ({self.log_path}):\n{tail}"
        return text

    # -- reader thread -------------------------------------------------------------

    def _read(self, proc: subprocess.Popen) -> None:
        """Parse stdout lines into events until the pipe closes, then report the exit."""
        try:
            for raw in proc.stdout:
                try:
                    event = protocol.loads(raw)
                except protocol.ProtocolError:
                    continue  # a stray print on stdout is not an event
                if event.get("event") == "ready":
                    self._handshake(proc, event)
                self._events.put(event)
        except (OSError, ValueError):  # stop() closed the pipe under us
            pass
        returncode = proc.wait()
        if proc is self._proc:  # not stopped on purpose (stop() forgets the process first)
            self.returncode = returncode
            if self._state != "dead":  # a refused handshake has already said why
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


# -- registry ------------------------------------------------------------------------

_clients: dict[tuple[str, str, str, str], BackendClient] = {}


def registry_key(python, model_dir, device: str, precision: str) -> tuple[str, str, str, str]:
    """Normalised (python, model folder, device, precision)."""
    def norm(p) -> str:
        return os.path.abspath(os.path.expanduser(str(p))) if p and str(p).strip() else ""
    return norm(python), norm(model_dir), device, precision


def default_log_path(key: tuple[str, ...]) -> Path:
    """A per-configuration log file in the temp folder (stable across restarts)."""
    digest = hashlib.sha1("|".join(key).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / "irg-motion" / f"backend-{os.getpid()}-{digest}.log"


def get_client(python, model_dir, device: str = "auto", precision: str = "auto") -> BackendClient:
    """The registry's client for this configuration, validated (BackendError) but not started.

    Starting a different configuration stops the others: only one model stays in memory."""
    key = registry_key(python, model_dir, device, precision)
    validate_python(key[0])
    validate_model_dir(key[1])
    client = _clients.get(key)
    if client is None:
        for other_key in list(_clients):
            _clients.pop(other_key).stop()
        client = _clients[key] = BackendClient(key[0], key[1], device, precision)
    return client


def running_clients() -> list[BackendClient]:
    """Clients whose process is starting or ready."""
    return [c for c in _clients.values() if c.state in ("starting", "ready")]


def shutdown_all() -> None:
    """Stop every backend (add-on unregister, Blender quit)."""
    while _clients:
        _, client = _clients.popitem()
        client.stop()


atexit.register(shutdown_all)
