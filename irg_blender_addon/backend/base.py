"""The one interface every backend client has, and the error they all raise.

Plain Python (no bpy). A job drives a `Backend` without knowing where the model runs:
`local.BackendClient` (a subprocess speaking docs/protocol.md over pipes) and
`remote.RemoteBackendClient` (a server over TCP) both implement it, and
`registry.client_for(settings)` picks one. A new transport (e.g. HTTP) subclasses
`Backend` and gets a branch in the registry.
"""
from __future__ import annotations

import itertools
import queue
import threading
from abc import ABC, abstractmethod
from typing import Any


class BackendError(RuntimeError):
    """A backend problem with a message that names the problem and the fix."""


class Backend(ABC):
    """A connection to one loaded model. `state` is one of "stopped", "starting", "ready", "dead";
    `ready_info` is the backend's `ready` handshake (None before it)."""

    def __init__(self) -> None:
        self.ready_info: dict[str, Any] | None = None
        self.returncode: int | None = None  # a local process's exit status (None for a remote one)
        self._state = "stopped"
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()  # filled by the reader thread
        self._reader: threading.Thread | None = None
        self._ready_event = threading.Event()
        self._ids = itertools.count(1)

    @property
    @abstractmethod
    def key(self) -> tuple[str, ...]:
        """What identifies this backend in the registry."""

    @property
    def state(self) -> str:
        """"stopped", "starting" (loading the model, or connected and waiting for the handshake),
        "ready" or "dead"."""
        return self._state

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The local process id (None for a remote backend or before the start)."""

    @abstractmethod
    def validate(self) -> None:
        """BackendError naming the fix when the configuration cannot work (nothing is started)."""

    @abstractmethod
    def start(self) -> None:
        """Start the process or open the connection (returns before the model has loaded)."""

    @abstractmethod
    def ensure_started(self) -> None:
        """Start unless starting or ready (a dead backend is started afresh)."""

    def new_id(self, prefix: str = "r") -> str:
        """A request id unique within this backend (a server keeps ids per connection)."""
        return f"{prefix}{next(self._ids)}"

    @abstractmethod
    def send(self, request: dict[str, Any]) -> str:
        """Send (or queue) a request; returns its id."""

    @abstractmethod
    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        """The events that arrived since the last poll (never blocks)."""

    @abstractmethod
    def wait_ready(self, timeout: float = 600.0) -> dict[str, Any]:
        """Block until the `ready` handshake (BackendError on death or timeout)."""

    @abstractmethod
    def stop(self, timeout: float = 2.0) -> None:
        """Stop the process or disconnect; idempotent."""

    @abstractmethod
    def status_text(self) -> str:
        """One line for the panel."""

    @abstractmethod
    def log_tail(self, n: int = 20) -> str:
        """The last `n` lines of the backend's (or the connection's) log."""

    @abstractmethod
    def death_message(self) -> str:
        """Why the backend died, with the fix (for an `error` event)."""
