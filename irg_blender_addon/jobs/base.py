"""Backend requests in progress: read their events and apply them to the scene.

A job's `pump()` never blocks: it drains what the backend has sent so far, applies
it (new versions, metadata, the live preview) and mirrors status and trace onto
the WindowManager for the panels. In the UI a `bpy.app.timers` function pumps the
one running job every 0.05 s; timers never run in background mode, so scripts
(api) and tests call pump() in a loop.

This module: `BackendJob` (the request/event lifecycle), `JobManager` (the one running
job and its timer) and what every job kind shares. The kinds live beside it:
generate.GenerateJob (+ the live preview), review.RefineJob/CritiqueJob/CaptionJob,
batch.BatchJob; solve.ChannelSolver solves rotations off the main thread.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from collections import deque
from typing import Any, Callable

import bpy
import numpy as np

from .. import props
from ..anim import actions
from ..backend.base import Backend, BackendError
from ..core import limits, protocol
from ..rig import sampling
from ..settings import Settings

TIMER_INTERVAL = 0.05
SECTION_TITLES = {"analyze": "Analysis", "plan": "Plan", "assess": "Assessment", "caption": "Caption"}
TEXT_BUDGET = 500                # text tokens a critique trace takes at most (analysis 300 + assessment 200)
META_FIELDS = ("keep", "caption")  # the version metadata the panel's buttons set


TIMER_INTERVAL = 0.05
SECTION_TITLES = {"analyze": "Analysis", "plan": "Plan", "assess": "Assessment", "caption": "Caption"}


def set_meta(action: bpy.types.Action, **fields) -> None:
    """Set `keep` (bool) or `caption` (str) in a version's metadata (actions.update_info;
    TypeError for another field, ValueError for a non-version)."""
    unknown = set(fields) - set(META_FIELDS)
    if unknown:
        raise TypeError(f"cannot set {', '.join(sorted(unknown))}; settable: {', '.join(META_FIELDS)}")
    actions.update_info(action, **fields)


def check_token_count(action: bpy.types.Action) -> None:
    """ValueError when a version holds more motion tokens than the backend takes (MAX_MOTION_TOKENS_IN),
    said before anything is sent or started."""
    count = len(actions.version_info(action).get("tokens") or ())
    bound = limits.MAX_MOTION_TOKENS_IN
    if count > bound:
        raise ValueError(f"Version {action.name!r} holds {count} motion tokens; the backend takes at most {bound} "
                         f"({bound // 5} s). Its metadata was edited or the file is damaged: use another version.")


def motion_source(action: bpy.types.Action, armature: bpy.types.Object | None = None) -> dict[str, Any]:
    """The `{motion}` fields of a critique/refine/caption request for an Action.

    A version's motion tokens when it has them; else the joints it was made from;
    else (hand-keyed or imported animation, or a version whose keys the animator
    edited: actions.is_edited) the Action sampled on `armature` (sampling.py), which
    the backend encodes. ValueError when none of these works."""
    info = actions.version_info(action)
    if info and actions.is_edited(action):
        if armature is None:
            raise ValueError(f"Version {action.name!r} was edited by hand: select the armature it animates, so the "
                             "edited animation can be sampled.")
    elif info.get("tokens"):
        check_token_count(action)
        return {"tokens": [int(t) for t in info["tokens"]]}
    elif info and action.get(actions.JOINTS_KEY) is not None:
        joints, _contacts = actions.source_motion(action)
        return {"joints": protocol.encode_array(joints.astype(np.float32)), "fps": float(info.get("src_fps", 20.0))}
    if armature is None:
        raise ValueError(f"Action {action.name!r} is not an IRG Motion version: select the armature it animates, "
                         "so it can be sampled.")
    sampled = sampling.sample_action(armature, action)
    return {"joints": protocol.encode_array(sampled.joints.astype(np.float32)), "fps": float(sampled.fps)}


def _latest_previews(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events minus the previews that a later preview of the same request supersedes."""
    last = {e.get("id"): i for i, e in enumerate(events) if e.get("event") == "preview"}
    return [e for i, e in enumerate(events) if e.get("event") != "preview" or last[e.get("id")] == i]


class BackendJob:
    """One request sent to the backend, its events applied by pump(). Subclasses say what
    to send (`request`) and handle their events in `_on_<event>` methods."""

    kind = "job"

    def __init__(self, client: Backend, settings: Settings):
        self.client = client
        self.settings = settings
        self.state = "new"  # new, running, done, error, cancelled
        self.status = ""
        self.error = ""
        self.trace = ""
        self.assessment = ""
        self.progress = 0.0
        self.warnings: list[str] = []
        self.action_names: list[str] = []  # versions this job wrote, in order
        self.request_id: str | None = None
        self.started_at = 0.0
        self.edits = 0            # scene changes so far (the UI timer pushes an undo step for each)
        self.edit_message = ""
        self._section = ""
        self._text_tokens = 0
        self._cancel_sent = False
        self._open = False        # our request has not ended yet
        self._published: dict[str, Any] = {}
        self._backlog: deque[dict[str, Any]] = deque()  # polled, not applied yet (held while _waiting)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def request(self) -> dict[str, Any]:
        """The request to send (docs/protocol.md)."""
        raise NotImplementedError

    def working_text(self) -> str:
        return "Working..."

    def start(self) -> None:
        """Start (or reuse) the backend and send the request; BackendError if it cannot."""
        loading = self.client.state != "ready"
        self.client.ensure_started()
        self.started_at = time.monotonic()
        self.state = "running"
        self._send()
        self._set_status("Loading the model..." if loading else self.working_text())
        self._publish()

    def pump(self, max_events: int = 64) -> bool:
        """Apply up to max_events backend events to the scene; True while the job runs.

        Never blocks: events that must wait (for a version being solved) stay queued, in order."""
        if not self.running:
            return False
        self._backlog.extend(self.client.poll(max(0, max_events - len(self._backlog))))
        if self._safely(self._settle):  # this pump's costly step is done: the events wait for the next
            self._publish()
            return self.running
        self._backlog = deque(_latest_previews(list(self._backlog)))
        applied = 0
        while self.running and self._backlog and applied < max_events and not self._waiting():
            self._safely(self._apply, self._backlog.popleft())
            applied += 1
        self._publish()
        if self.running:
            self._idle()  # last: a worker it starts then runs while Blender draws, not while we publish
        return self.running

    def cancel(self) -> None:
        """Ask the backend to stop; a second call (or a dead backend) ends the job at once."""
        if not self.running:
            return
        if self._cancel_sent or self.client.state not in ("starting", "ready"):
            self.client.stop()
            self._finish("cancelled", "Cancelled (the backend was stopped).")
            return
        try:
            self.client.send({"type": "cancel", "target": self.request_id})
            self._cancel_sent = True
            self._set_status("Cancelling...")
            self._publish()
        except BackendError:
            self._finish("cancelled", "Cancelled.")

    def abandon(self) -> None:
        """End now without waiting for the backend (another file is opening): its request is
        cancelled, its late events are ignored, the live preview is removed."""
        if not self.running:
            return
        self._cancel_open_request()
        self._finish("cancelled", "Cancelled: another file was opened.")

    def fail(self, message: str) -> None:
        """End the job with an error message (the status line shows it); stop our request."""
        self._cancel_open_request()
        self.error = message
        self._finish("error", message)

    # -- events ----------------------------------------------------------------------

    def _safely(self, step: Callable[..., Any], *args) -> Any:
        """step(*args); a failure ends the job with its message instead of escaping the pump."""
        try:
            return step(*args)
        except ValueError as exc:  # the scene refused the result (e.g. a rig it cannot key): say why
            self.fail(str(exc))
        except Exception as exc:  # a bug: end the job visibly instead of leaving it running
            traceback.print_exc()
            self.fail(f"Internal error while applying the backend's events: {exc}")
        return None

    def _apply(self, event: dict[str, Any]) -> None:
        kind, event_id = event.get("event"), event.get("id")
        if kind == "ready":
            model = event.get("model") or {}
            device = event.get("device") or {}
            self._set_status(f"Model {model.get('name', '?')} loaded on {device.get('type', '?')} "
                             f"({device.get('precision', '?')}); {self.working_text().lower()}")
        elif kind == "error" and (event_id is None or event_id == self.request_id):
            self._open = False
            self._on_error(event)
        elif event_id != self.request_id:
            return  # a late event of an earlier (cancelled) request
        elif kind == "done":
            self._open = False
            self.warnings.extend(str(w) for w in event.get("warnings") or ())
            if event.get("stop_reason") == "cancelled" or self._cancel_sent:
                self._finish("cancelled", self._cancelled_text())
            else:
                self._on_done(event)
        elif not self._cancel_sent:  # after Cancel nothing more is written, even what was already on its way
            handler = getattr(self, f"_on_{kind}", None)  # _on_text, _on_motion, _on_assessment, ...
            if handler is not None:
                handler(event)

    def _on_text(self, event: dict[str, Any]) -> None:
        section = event.get("section", "other")
        if section != self._section:
            self._section = section
            title = SECTION_TITLES.get(section)
            self.trace += ("\n" if self.trace else "") + (f"{title}: " if title else "")
        self.trace += event.get("delta", "")
        self._text_tokens += 1
        self.progress = max(self.progress, min(0.95, self._text_tokens / TEXT_BUDGET))

    def _on_assessment(self, event: dict[str, Any]) -> dict[str, Any]:
        info = {"assessment": str(event.get("assessment", "")), "refinement": str(event.get("refinement", "")),
                "satisfied": bool(event.get("satisfied", False))}
        self.assessment += ("\n" if self.assessment else "") + (
            f"Round {event.get('round', 1)}: {info['assessment'] or '(no assessment)'}\n"
            f"Refinement: {info['refinement'] or '(none)'}")
        return info

    def _on_error(self, event: dict[str, Any]) -> None:
        self.fail(str(event.get("message") or f"backend error {event.get('code')}"))

    def _on_done(self, event: dict[str, Any]) -> None:
        """The request ended (not cancelled): finish the job."""
        raise NotImplementedError

    def _cancelled_text(self) -> str:
        return "Cancelled."

    def _idle(self) -> None:
        """Work done once per pump after the events (e.g. a throttled preview)."""

    def _settle(self) -> bool:
        """Work done first in a pump (e.g. writing a solved version); True when it was done,
        so the pump leaves the events to the next one."""
        return False

    def _waiting(self) -> bool:
        """True while the events must wait (a version is being solved)."""
        return False

    # -- helpers ---------------------------------------------------------------------

    def _cancel_open_request(self) -> None:
        """Ask a live backend to stop our request if it has not ended (best effort: the job ends anyway)."""
        if self._open and self.client.state in ("starting", "ready"):
            with contextlib.suppress(BackendError):
                self.client.send({"type": "cancel", "target": self.request_id})

    def _send(self) -> None:
        self._section = ""
        self.request_id = self.client.send(self.request())
        self._open = True

    def _note_edit(self, message: str) -> None:
        self.edits += 1
        self.edit_message = message

    def _set_status(self, text: str) -> None:
        """Change the status line (the panel sees it at the end of the pump, or of start/cancel/finish)."""
        self.status = text

    def _finish(self, state: str, status: str) -> None:
        self.state = state
        self._open = False
        self._cleanup()
        if self.warnings and state == "done":
            status += " Warnings: " + "; ".join(self.warnings)
        self._set_status(status)
        self._publish()

    def _cleanup(self) -> None:
        """Undo what must not outlive the job (the live preview)."""

    def _publish(self) -> None:
        """Mirror the job onto the WindowManager's runtime properties (only what changed)."""
        rt = props.runtime()
        if rt is None:
            return
        values = {"status": self.status, "running": self.running, "progress": self.progress, "trace": self.trace,
                  "assessment": self.assessment, "job_kind": self.kind,
                  "level": {"running": "RUNNING", "done": "DONE", "error": "ERROR",
                            "cancelled": "CANCELLED"}.get(self.state, "IDLE")}
        for name, value in values.items():
            if self._published.get(name) != value:
                setattr(rt, name, value)
        self._published = values


class JobManager:
    """Holds the one running job and the timer that pumps it in the UI."""

    def __init__(self):
        self.job: BackendJob | None = None

    def busy(self) -> bool:
        """True while a job runs."""
        return self.job is not None and self.job.running

    def start(self, job: BackendJob, *, timer: bool | None = None) -> None:
        """Start the job (BackendError/ValueError if it cannot) and its timer (timer None: unless
        Blender runs in background mode, where timers never run and scripts pump)."""
        if self.busy():
            raise RuntimeError("IRG Motion is busy with another request: wait for it or press Cancel.")
        self.job = job
        job.start()
        if timer is None:
            timer = not bpy.app.background
        if timer and not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TIMER_INTERVAL)

    def cancel(self) -> None:
        """Cancel the running job, if any."""
        if self.job is not None:
            self.job.cancel()

    def abandon(self) -> None:
        """End the running job at once, leaving the scene as it was before it (call from a load_pre handler)."""
        if self.busy():
            self.job.abandon()

    def shutdown(self) -> None:
        """Stop the timer and forget the job (add-on unregister)."""
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)
        if self.busy():
            self.job.cancel()
            self.job.cancel()  # the second call ends it now (its preview removed)
        self.job = None


manager = JobManager()


def _tick() -> float | None:
    """Timer callback: pump the job, push an undo step per scene change, redraw; None ends the timer."""
    job = manager.job
    if job is None:
        return None
    edits = getattr(job, "edits", 0)
    try:
        running = job.pump()
    except Exception as exc:  # a timer that raises is dropped silently: end the job visibly instead
        traceback.print_exc()
        job.fail(f"Internal error while applying the backend's events: {exc}")
        running = False
    if getattr(job, "edits", 0) > edits:
        _push_undo(getattr(job, "edit_message", "") or "IRG Motion")
    _redraw()
    return TIMER_INTERVAL if running else None


def window_context():
    """A context with a window for operators called from a timer (whose context has none)."""
    windows = getattr(bpy.context.window_manager, "windows", ())
    if bpy.context.window is not None or not windows:
        return contextlib.nullcontext()
    return bpy.context.temp_override(window=windows[0], screen=windows[0].screen)


def _push_undo(message: str) -> None:
    """An undo step for what the timer wrote (operators push their own; timers do not)."""
    if bpy.app.background:
        return
    try:
        with window_context():
            bpy.ops.ed.undo_push(message=message)
    except RuntimeError as exc:  # no undo step is better than a dead timer
        print(f"IRG Motion: could not push an undo step: {exc}")


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def check_idle() -> None:
    """RuntimeError when a job already runs (the start_* functions refuse before anything is spawned)."""
    if manager.busy():
        raise RuntimeError("IRG Motion is busy with another request: wait for it or press Cancel (Esc).")
