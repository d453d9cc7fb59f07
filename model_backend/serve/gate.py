"""Sharing one engine that decodes one sequence at a time between many requests, fairly.

`FairGate` admits at most `max_active` requests (each holds a KV cache, so this bounds
memory); the others wait in arrival order. The admitted ones take turns on the engine:
the holder keeps it for at most `time_slice_s` of decoding while another admitted
request waits, then goes to the back of the line. The engine calls `pace()` between
tokens, which is where a turn changes hands, so a 65,000-token request cannot hold the
engine for minutes: everyone else gets a slice in every round.

A request whose `cancel` is set while it waits leaves the line at once (`acquire`
returns None, `pace` returns so the engine sees the cancel before its next token).
"""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator

__all__ = ["FairGate"]

POLL_S = 0.05  # how often a waiting request looks at its cancel flag


class _Ticket:
    def __init__(self, cancel: threading.Event | None):
        self.cancel = cancel
        self.since = 0.0  # when its current turn began

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class FairGate:
    """Admission (at most `max_active`) and round-robin turns of at most `time_slice_s` each."""

    def __init__(self, max_active: int = 4, time_slice_s: float = 1.0):
        if max_active < 1 or time_slice_s <= 0:
            raise ValueError("max_active must be >= 1 and time_slice_s > 0")
        self.max_active = max_active
        self.time_slice_s = time_slice_s
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Ticket] = collections.deque()  # not yet admitted
        self._turns: collections.deque[_Ticket] = collections.deque()    # admitted; the head holds the engine
        self._local = threading.local()
        self.handovers = 0  # turns given up to another request (for tests and logs)

    # -- facts

    @property
    def load(self) -> int:
        """Requests admitted or waiting."""
        with self._cond:
            return len(self._turns) + len(self._waiting)

    # -- holding the engine

    @contextlib.contextmanager
    def hold(self, cancel: threading.Event | None = None) -> Iterator[bool]:
        """Wait for admission and the first turn; yields False (and holds nothing) when cancelled first."""
        ticket = self._acquire(cancel)
        if ticket is None:
            yield False
            return
        self._local.ticket = ticket
        try:
            yield True
        finally:
            self._local.ticket = None
            self._release(ticket)

    def pace(self) -> None:
        """Between two tokens: hand the engine over when this turn is used up and another request waits.

        Called from the thread inside `hold()`; a no-op anywhere else."""
        ticket = getattr(self._local, "ticket", None)
        if ticket is None:
            return
        with self._cond:
            if len(self._turns) < 2 or time.monotonic() - ticket.since < self.time_slice_s:
                return
            self._turns.remove(ticket)
            self._turns.append(ticket)
            self.handovers += 1
            self._cond.notify_all()
            self._wait_turn(ticket)

    def _acquire(self, cancel: threading.Event | None) -> _Ticket | None:
        ticket = _Ticket(cancel)
        with self._cond:
            self._waiting.append(ticket)
            self._admit()
            while ticket in self._waiting:
                if ticket.cancelled:
                    self._waiting.remove(ticket)
                    return None
                self._cond.wait(POLL_S)
            if not self._wait_turn(ticket):
                self._drop(ticket)
                return None
        return ticket

    def _wait_turn(self, ticket: _Ticket) -> bool:
        """Wait (lock held) until `ticket` heads the turns; False when it is cancelled first."""
        while self._turns[0] is not ticket:
            if ticket.cancelled:
                return False
            self._cond.wait(POLL_S)
        ticket.since = time.monotonic()
        return True

    def _release(self, ticket: _Ticket) -> None:
        with self._cond:
            self._drop(ticket)

    def _drop(self, ticket: _Ticket) -> None:
        if ticket in self._turns:
            self._turns.remove(ticket)
        self._admit()
        self._cond.notify_all()

    def _admit(self) -> None:
        while self._waiting and len(self._turns) < self.max_active:
            self._turns.append(self._waiting.popleft())
        self._cond.notify_all()
