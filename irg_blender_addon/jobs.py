"""A generation in progress: read the backend's events and apply them to the scene.

`GenerateJob.pump()` never blocks: it drains what the backend has sent so far,
writes each complete motion as a new Action version, and mirrors status and
trace onto the WindowManager for the panel. In the UI a `bpy.app.timers`
function pumps it every 0.05 s; timers never run in background mode, so scripts
(api.generate) and tests call pump() in a loop. Nothing touches the scene until
a complete `motion` event arrives.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from typing import Any

import bpy

from . import actions, props, rig
from .client import BackendClient, BackendError
from .core import protocol
from .prefs import Settings

TIMER_INTERVAL = 0.05
SECTION_TITLES = {"analyze": "Analysis", "plan": "Plan", "assess": "Assessment", "caption": "Caption"}


class GenerateJob:
    """One prompt sent to the backend; the Actions it produced, in order.

    armature_name None: the default rig is created (rig.ensure_armature) when the
    first motion arrives, so a generation that fails leaves no new object behind."""

    def __init__(self, client: BackendClient, armature_name: str | None, prompt: str, settings: Settings):
        self.client = client
        self.armature_name = armature_name
        self.prompt = prompt.strip()
        self.settings = settings
        self.mode = settings.mode
        self.state = "new"  # new, running, done, error, cancelled
        self.status = ""
        self.error = ""
        self.trace = ""
        self.assessment = ""
        self.progress = 0.0
        self.warnings: list[str] = []
        self.action_names: list[str] = []
        self.request_id: str | None = None
        self.fell_back = False
        self.started_at = 0.0
        self._section = ""
        self._round_tokens = 0
        self._request_motions = 0
        self._actions_by_round: dict[int, str] = {}
        self._assessments: dict[int, dict[str, Any]] = {}
        self._cancel_sent = False

    @property
    def running(self) -> bool:
        return self.state == "running"

    def start(self) -> None:
        """Start (or reuse) the backend and send the generate request; BackendError if it cannot."""
        if not self.prompt:
            raise ValueError("The prompt is empty: describe the motion to generate.")
        loading = self.client.state != "ready"
        self.client.ensure_started()
        self.started_at = time.monotonic()
        self.state = "running"
        self._send(self.mode)
        self._set_status("Loading the model..." if loading else "Generating...")

    def pump(self, max_events: int = 64) -> bool:
        """Apply up to max_events backend events to the scene; True while the job runs."""
        if not self.running:
            return False
        for event in self.client.poll(max_events):
            self._apply(event)
            if not self.running:
                break
        self._publish()
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
        except BackendError:
            self._finish("cancelled", "Cancelled.")

    def fail(self, message: str) -> None:
        """End the job with an error message (the status line shows it)."""
        self.error = message
        self._finish("error", message)

    # -- events ----------------------------------------------------------------------

    def _apply(self, event: dict[str, Any]) -> None:
        kind, event_id = event.get("event"), event.get("id")
        if kind == "ready":
            model = event.get("model") or {}
            device = event.get("device") or {}
            self._set_status(f"Model {model.get('name', '?')} loaded on {device.get('type', '?')} "
                             f"({device.get('precision', '?')}); generating...")
        elif kind == "error" and (event_id is None or event_id == self.request_id):
            self._on_error(event)
        elif event_id != self.request_id:
            return  # a late event of an earlier (cancelled) request
        elif kind == "text":
            self._on_text(event)
        elif kind == "motion_tokens":
            self._round_tokens += len(event.get("tokens") or ())
            self.progress = min(1.0, self._round_tokens / max(1, self.settings.max_motion_tokens))
            self._set_status(f"Round {event.get('round', 1)}: {self._round_tokens} motion tokens")
        elif kind == "motion":
            self._on_motion(event)
        elif kind == "assessment":
            self._on_assessment(event)
        elif kind == "done":
            self._on_done(event)

    def _on_text(self, event: dict[str, Any]) -> None:
        section = event.get("section", "other")
        if section != self._section:
            self._section = section
            title = SECTION_TITLES.get(section)
            self.trace += ("\n" if self.trace else "") + (f"{title}: " if title else "")
        self.trace += event.get("delta", "")

    def _on_motion(self, event: dict[str, Any]) -> None:
        joints = protocol.decode_array(event["joints"])
        rnd = int(event.get("round", 1))
        armature = self._armature()
        if armature is None:
            return
        parent = bpy.data.actions.get(self.action_names[-1]) if self.action_names else None
        pending = self._assessments.get(rnd, {})
        model = (self.client.ready_info or {}).get("model") or {}
        action = actions.write_version(
            armature, joints, fps=float(event.get("fps", 20.0)), prompt=self.prompt, round=rnd,
            tokens=tuple(int(t) for t in event.get("tokens") or ()),
            assessment=pending.get("assessment", ""), refinement=pending.get("refinement", ""),
            model=str(model.get("name", "")), seed=self.settings.seed, parent=parent, source="generate",
            extra={"mode": self.mode, "backend_source": str(event.get("source", ""))})
        self.action_names.append(action.name)
        self._actions_by_round[rnd] = action.name
        self._request_motions += 1
        self._round_tokens = 0
        self.progress = 1.0
        self._set_status(f"Round {rnd}: wrote {action.name}")

    def _on_assessment(self, event: dict[str, Any]) -> None:
        rnd = int(event.get("round", 1))
        info = {"assessment": str(event.get("assessment", "")), "refinement": str(event.get("refinement", ""))}
        self._assessments[rnd] = info
        self.assessment = f"Assessment: {info['assessment']}\nRefinement: {info['refinement']}"
        action = bpy.data.actions.get(self._actions_by_round.get(rnd, ""))
        if action is not None:
            actions.update_info(action, **info)

    def _on_done(self, event: dict[str, Any]) -> None:
        self.warnings.extend(str(w) for w in event.get("warnings") or ())
        reason = event.get("stop_reason", "")
        if reason == "cancelled":
            self._finish("cancelled", f"Cancelled; kept {self._versions_text()}.")
        elif self._request_motions == 0 and self._fall_back("the reasoning trace held no complete motion"):
            return
        elif not self.action_names:
            self.fail(f"The model produced no motion (stop reason: {reason or 'unknown'}): "
                      "try another prompt, a higher Max Motion Tokens, or a temperature above 0.")
        else:
            elapsed = time.monotonic() - self.started_at
            note = " (direct mode: the reasoning trace held no motion)" if self.fell_back else ""
            self._finish("done", f"Done in {elapsed:.1f} s: {self._versions_text()}{note}.")

    def _on_error(self, event: dict[str, Any]) -> None:
        if event.get("code") == "no_motion" and event.get("id") is not None \
                and self._fall_back("the model produced no usable motion"):
            return
        self.fail(str(event.get("message") or f"backend error {event.get('code')}"))

    def _fall_back(self, why: str) -> bool:
        """Re-ask once in direct mode after an interleaved trace without a motion."""
        if self.mode != "interleaved" or self.fell_back:
            return False
        self.fell_back = True
        self.mode = "direct"
        self._send("direct")
        self._set_status(f"Retrying in direct mode: {why}.")
        return True

    # -- helpers ---------------------------------------------------------------------

    def _send(self, mode: str) -> None:
        self._request_motions = 0
        self._round_tokens = 0
        self._section = ""
        self.request_id = self.client.send(self.settings.generate_request(self.prompt, mode))

    def _armature(self) -> bpy.types.Object | None:
        if self.armature_name is None:
            with window_context():  # making bones runs mode_set, which needs a window in a UI timer
                armature = rig.ensure_armature(bpy.context)
            self.armature_name = armature.name
            return armature
        armature = bpy.data.objects.get(self.armature_name)
        if armature is None or armature.type != "ARMATURE":
            self.client.send({"type": "cancel", "target": self.request_id})
            self.fail(f"The armature {self.armature_name!r} was deleted during the generation; "
                      "select an armature and generate again.")
            return None
        return armature

    def _versions_text(self) -> str:
        if not self.action_names:
            return "no versions"
        return f"{len(self.action_names)} version(s) ({', '.join(self.action_names)})"

    def _set_status(self, text: str) -> None:
        self.status = text
        self._publish()

    def _finish(self, state: str, status: str) -> None:
        self.state = state
        if self.warnings and state == "done":
            status += " Warnings: " + "; ".join(self.warnings)
        self._set_status(status)

    def _publish(self) -> None:
        """Mirror the job onto the WindowManager's runtime properties for the panel."""
        rt = props.runtime()
        if rt is None:
            return
        rt.status = self.status
        rt.level = {"running": "RUNNING", "done": "DONE", "error": "ERROR",
                    "cancelled": "CANCELLED"}.get(self.state, "IDLE")
        rt.running = self.running
        rt.progress = self.progress
        rt.trace = self.trace
        rt.assessment = self.assessment


class JobManager:
    """Holds the one running job and the timer that pumps it in the UI."""

    def __init__(self):
        self.job: GenerateJob | None = None

    def busy(self) -> bool:
        """True while a job runs."""
        return self.job is not None and self.job.running

    def start(self, job: GenerateJob, *, timer: bool = True) -> None:
        """Start the job (BackendError/ValueError if it cannot) and, in the UI, its timer."""
        if self.busy():
            raise RuntimeError("A generation is already running: cancel it first.")
        self.job = job
        job.start()
        if timer and not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TIMER_INTERVAL)

    def cancel(self) -> None:
        """Cancel the running job, if any."""
        if self.job is not None:
            self.job.cancel()

    def shutdown(self) -> None:
        """Stop the timer and forget the job (add-on unregister)."""
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)
        if self.busy():
            self.job.cancel()
        self.job = None


manager = JobManager()


def _tick() -> float | None:
    """Timer callback: pump the job, redraw the panels; None ends the timer."""
    job = manager.job
    if job is None:
        return None
    written = len(job.action_names)
    try:
        running = job.pump()
    except Exception as exc:  # a timer that raises is dropped silently: end the job visibly instead
        traceback.print_exc()
        job.fail(f"Internal error while applying the backend's events: {exc}")
        running = False
    if len(job.action_names) > written:
        _push_undo(f"IRG Motion: {job.action_names[-1]}")
    _redraw()
    return TIMER_INTERVAL if running else None


def window_context():
    """A context with a window for operators called from a timer (whose context has none)."""
    windows = getattr(bpy.context.window_manager, "windows", ())
    if bpy.context.window is not None or not windows:
        return contextlib.nullcontext()
    return bpy.context.temp_override(window=windows[0], screen=windows[0].screen)


def _push_undo(message: str) -> None:
    """An undo step for versions written by the timer (operators push their own; timers do not)."""
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
