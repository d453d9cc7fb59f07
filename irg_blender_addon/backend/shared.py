"""One backend client shared by several jobs at once (a batch with prompts in flight together).

A client has one event queue for all its requests, and a job drops the events of ids that
are not its own. `SharedClient.view()` gives each job a client of its own: `send` records
which view a request id belongs to, and `poll` hands each view only its requests' events.
Events without an id (`ready`, a dead backend's `error`) and late events of ids nobody owns
any more go to every view (a job ignores what is not its own). No bpy.
"""
from __future__ import annotations

from collections import deque
from typing import Any

POLL_BATCH = 256


class SharedClient:
    """Routes the events of one client to the views its jobs use."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._views: list[ClientView] = []
        self._owners: dict[str, ClientView] = {}

    def view(self) -> "ClientView":
        """A client for one more job."""
        view = ClientView(self)
        self._views.append(view)
        return view

    def release(self, view: "ClientView") -> None:
        """The view's job has ended: its requests' later events go to everyone (and are ignored)."""
        self._views = [v for v in self._views if v is not view]
        self._owners = {rid: v for rid, v in self._owners.items() if v is not view}

    def own(self, request_id: str, view: "ClientView") -> None:
        self._owners[request_id] = view

    def fill(self) -> None:
        """Move the client's waiting events to the views they belong to."""
        while True:
            events = self.client.poll(POLL_BATCH)
            for event in events:
                owner = self._owners.get(event.get("id"))
                for view in [owner] if owner is not None else self._views:
                    view.backlog.append(event)
            if len(events) < POLL_BATCH:
                return


class ClientView:
    """A job's client: the shared client's methods, with `send` and `poll` limited to its own requests."""

    def __init__(self, shared: SharedClient) -> None:
        self._shared = shared
        self.backlog: deque[dict[str, Any]] = deque()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared.client, name)

    def send(self, request: dict[str, Any]) -> str:
        """Send through the shared client; a work request's events come back to this view."""
        request_id = self._shared.client.send(request)
        if request.get("type") != "cancel":
            self._shared.own(request_id, self)
        return request_id

    def poll(self, max_events: int = 100) -> list[dict[str, Any]]:
        self._shared.fill()
        count = min(max_events, len(self.backlog))
        return [self.backlog.popleft() for _ in range(count)]
