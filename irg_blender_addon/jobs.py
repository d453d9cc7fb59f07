"""Backend requests in progress: read their events and apply them to the scene.

A job's `pump()` never blocks: it drains what the backend has sent so far, applies
it (new versions, metadata, the live preview) and mirrors status and trace onto
the WindowManager for the panels. In the UI a `bpy.app.timers` function pumps the
one running job every 0.05 s; timers never run in background mode, so scripts
(api) and tests call pump() in a loop.

- GenerateJob: a prompt -> one version per completed motion round.
- RefineJob: a version (or any Action) plus an instruction -> one new version
  whose parent is recorded.
- CritiqueJob: the model's assessment and proposed instruction for an Action.
- CaptionJob: the model's description of an Action.

Rotations are never solved on the main thread. A GenerateJob reads the rig and the
panel's retarget options (retarget_ops.retarget_options: preset, root mode, foot
locking, smoothing) once, into a pose.ChannelPlan; a `motion` event then starts a
ChannelSolver (a worker thread, pure numpy) and holds back the events after it; a
later pump writes the version from the solved channels and goes on with them, so
versions keep their order and a pump only ever writes keys. Cancel, abandon or an
error while a solve runs write nothing; a solve that fails ends the job with its
message.

Live preview (GenerateJob/RefineJob with preview=True): `preview` events key ONE
provisional Action ("~preview", no fake user, not a version) on the armature; the
finished motion replaces it; cancel, error or a dead backend remove it and give
the armature back the Action it played before. Previews are solved like versions
(same plan and options, so they match the final version) by their own worker; at
most one preview is keyed per PREVIEW_INTERVAL, the latest one.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy
import numpy as np

from . import actions, compat, pose, props, retarget_ops, rig, sampling
from .client import BackendClient, BackendError
from .core import protocol
from .prefs import Settings

TIMER_INTERVAL = 0.05
SECTION_TITLES = {"analyze": "Analysis", "plan": "Plan", "assess": "Assessment", "caption": "Caption"}
PREVIEW_NAME = "~preview"
PREVIEW_MARK = "irg_preview"     # custom property on the provisional Action
PREVIEW_INTERVAL = 0.25          # seconds between two preview writes (the backend sends one per 8 tokens)
TEXT_BUDGET = 500                # text tokens a critique trace takes at most (analysis 300 + assessment 200)
META_FIELDS = ("keep", "caption")  # the version metadata the panel's buttons set


def set_meta(action: bpy.types.Action, **fields) -> None:
    """Set `keep` (bool) or `caption` (str) in a version's metadata (actions.update_info;
    TypeError for another field, ValueError for a non-version)."""
    unknown = set(fields) - set(META_FIELDS)
    if unknown:
        raise TypeError(f"cannot set {', '.join(sorted(unknown))}; settable: {', '.join(META_FIELDS)}")
    actions.update_info(action, **fields)


def motion_source(action: bpy.types.Action, armature: bpy.types.Object | None = None) -> dict[str, Any]:
    """The `{motion}` fields of a critique/refine/caption request for an Action.

    A version's motion tokens when it has them; else the joints it was made from;
    else (hand-keyed or imported animation) the Action sampled on `armature`
    (sampling.py), which the backend encodes. ValueError when none of these works."""
    info = actions.version_info(action)
    if info.get("tokens"):
        return {"tokens": [int(t) for t in info["tokens"]]}
    if info and action.get(actions.JOINTS_KEY) is not None:
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

    def __init__(self, client: BackendClient, settings: Settings):
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


class ChannelSolver:
    """Pose channels for joints, solved off the main thread (pose.solve_channels: numpy only,
    no bpy) on a plan read before on the main thread (pose.plan_channels).

    One solve at a time: `submit` starts it, `take` hands the channels back once ready.
    Dropping the solver drops its result; the thread then ends on its own."""

    def __init__(self, plan: pose.ChannelPlan, *, foot_lock: bool = False, smoothing: bool = False,
                 name: str = "irg-motion-solve"):
        self.plan = plan
        self.foot_lock = bool(foot_lock)
        self.smoothing = bool(smoothing)
        self.name = name
        self._thread: threading.Thread | None = None
        self._result: pose.PoseChannels | Exception | None = None

    @property
    def busy(self) -> bool:
        """A solve is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Nothing running and nothing solved waiting to be taken."""
        return not self.busy and self._result is None

    def submit(self, joints: np.ndarray, src_fps: float, contacts: np.ndarray | None = None) -> None:
        """Start solving (the caller checks `busy` first: one solve at a time)."""
        self._result = None
        self._thread = threading.Thread(target=self._solve, args=(joints, float(src_fps), contacts), daemon=True,
                                        name=self.name)
        self._thread.start()

    def take(self) -> pose.PoseChannels | None:
        """The solved channels once (None while solving or when nothing was submitted); a solve error raises."""
        if self.busy or self._result is None:
            return None
        result, self._result = self._result, None
        if isinstance(result, Exception):
            raise result
        return result

    def _solve(self, joints: np.ndarray, src_fps: float, contacts: np.ndarray | None) -> None:
        try:
            self._result = pose.solve_channels(self.plan, joints, src_fps=src_fps, foot_lock=self.foot_lock,
                                               smoothing=self.smoothing, contacts=contacts)
        except Exception as exc:  # handed to the main thread by take()
            self._result = exc


@dataclass
class _PendingVersion:
    """A motion whose channels are being solved; written as a version once they are."""

    event: dict[str, Any]
    joints: np.ndarray
    contacts: np.ndarray | None
    solver: ChannelSolver


@dataclass
class _Provisional:
    """The live preview's Action and what to give back when it goes."""

    action: str
    armature: str
    restore: str                                  # the Action the armature played before ("" for none)
    modes: dict[str, str] = field(default_factory=dict)  # bones switched to quaternions -> their old mode


class GenerateJob(BackendJob):
    """One prompt sent to the backend; the Actions it produced, in order.

    armature_name None: the default rig is created (rig.ensure_armature) when the
    first motion (or preview) arrives; a job that ends without a version removes it
    again, so a generation that fails leaves no new object behind. The rig and the
    panel's retarget options are read once (start, or when the rig is made) for the
    previews and the versions alike."""

    kind = "generate"

    def __init__(self, client: BackendClient, armature_name: str | None, prompt: str, settings: Settings,
                 *, preview: bool = False):
        super().__init__(client, settings)
        self.armature_name = armature_name
        self.prompt = prompt.strip()
        self.mode = settings.mode
        self.preview = bool(preview)
        self.fell_back = False
        self.previews_received = 0   # preview events from the backend
        self.previews_solved = 0     # handed to the solver (the latest one per preview_interval)
        self.previews_written = 0    # keyed on the armature
        self.preview_interval = PREVIEW_INTERVAL
        self._round_tokens = 0
        self._request_motions = 0
        self._actions_by_round: dict[int, str] = {}
        self._assessments: dict[int, dict[str, Any]] = {}
        self._made_rig = False
        self._provisional: _Provisional | None = None
        self._pending_preview: dict[str, Any] | None = None
        self._preview_at = -math.inf  # the first preview is solved at once, whatever the clock reads
        self._preview_solver: ChannelSolver | None = None
        self._plan: pose.ChannelPlan | None = None
        self._options: dict[str, Any] = {}      # retarget options (retarget_ops.retarget_options) of the plan
        self._version: _PendingVersion | None = None

    def request(self) -> dict[str, Any]:
        return {**self.settings.generate_request(self.prompt, self.mode), "preview": self.preview}

    def working_text(self) -> str:
        return "Generating..."

    def start(self) -> None:
        """As BackendJob.start; the rig's retarget plan is read first (ValueError if the armature
        cannot be keyed: better said now than after the generation)."""
        if not self.prompt:
            raise ValueError("The prompt is empty: describe the motion to generate.")
        armature = bpy.data.objects.get(self.armature_name or "")
        if armature is not None:
            self._channel_plan(armature)
        super().start()

    def _channel_plan(self, armature: bpy.types.Object) -> pose.ChannelPlan:
        """The plan for this armature with the panel's retarget options, read once per job."""
        if self._plan is None or self._plan.armature != armature.name:
            options = retarget_ops.retarget_options(bpy.context, armature)
            self._plan = pose.plan_channels(armature, preset=options["preset"], root_mode=options["root_mode"])
            self._options = options
        return self._plan

    def _new_solver(self, armature: bpy.types.Object, name: str) -> ChannelSolver:
        plan = self._channel_plan(armature)
        return ChannelSolver(plan, foot_lock=self._options["foot_lock"], smoothing=self._options["smoothing"],
                             name=name)

    # -- events ----------------------------------------------------------------------

    def _on_motion_tokens(self, event: dict[str, Any]) -> None:
        self._round_tokens += len(event.get("tokens") or ())
        self.progress = min(1.0, self._round_tokens / max(1, self.settings.max_motion_tokens))
        self._set_status(f"{self._round_label(event)}: {self._round_tokens} motion tokens")

    @property
    def preview_pending(self) -> bool:
        """A preview waits for its turn or is being solved."""
        return self._pending_preview is not None or (self._preview_solver is not None
                                                     and not self._preview_solver.idle)

    @property
    def version_pending(self) -> bool:
        """A motion is being solved (or solved and not yet written); later events wait for it."""
        return self._version is not None

    def _on_preview(self, event: dict[str, Any]) -> None:
        self.previews_received += 1
        if self.preview:
            self._pending_preview = event  # solved in _idle, after this pump's other events

    def _on_motion(self, event: dict[str, Any]) -> None:
        """Start solving the motion in a worker; _settle writes it, the events after it wait."""
        joints = protocol.decode_array(event["joints"])
        contacts = protocol.decode_array(event["contacts"]) if event.get("contacts") else None
        armature = self._armature()
        if armature is None:
            return
        solver = self._new_solver(armature, "irg-motion-version")
        self._pending_preview = None
        self._preview_solver = None  # a preview still being solved is dropped: the motion is final
        solver.submit(joints, float(event.get("fps", 20.0)), contacts)
        self._version = _PendingVersion(event, joints, contacts, solver)
        self._set_status(f"{self._round_label(event)}: solving the motion on {armature.name}...")

    def _waiting(self) -> bool:
        return self.version_pending

    def _settle(self) -> bool:
        """Write the pending motion's version once its channels are solved (True when written)."""
        pending = self._version
        if pending is None or pending.solver.busy:
            return False
        self._version = None
        if self._cancel_sent:  # after Cancel nothing more is written
            return False
        channels = pending.solver.take()  # a solve error raises here: the job fails with its message
        armature = self._armature()
        if armature is None or channels is None:
            return True
        self._write_version(armature, pending, channels)
        return True

    def _write_version(self, armature: bpy.types.Object, pending: _PendingVersion,
                       channels: pose.PoseChannels) -> None:
        event = pending.event
        self._restore_preview_modes(self._provisional)  # so write_version records the modes it changes itself
        model = (self.client.ready_info or {}).get("model") or {}
        action = actions.write_version(
            armature, pending.joints, fps=float(event.get("fps", 20.0)), model=str(model.get("name", "")),
            tokens=tuple(int(t) for t in event.get("tokens") or ()), seed=self.settings.seed,
            contacts=pending.contacts, channels=channels, **self._options, **self._version_fields(event))
        self._drop_preview(restore=False)  # the new version plays now
        self.action_names.append(action.name)
        self._actions_by_round[int(event.get("round", 1))] = action.name
        self._request_motions += 1
        self._round_tokens = 0
        self.progress = 1.0
        self._note_edit(f"IRG Motion: {action.name}")
        self._set_status(f"{self._round_label(event)}: wrote {action.name}")

    def _version_fields(self, event: dict[str, Any]) -> dict[str, Any]:
        """prompt, round, parent, source, assessment, refinement, extra of the version a motion event makes."""
        rnd = int(event.get("round", 1))
        pending = self._assessments.get(rnd, {})
        return {"prompt": self.prompt, "round": rnd, "source": "generate",
                "parent": self.action_names[-1] if self.action_names else None,
                "assessment": pending.get("assessment", ""), "refinement": pending.get("refinement", ""),
                "extra": {"mode": self.mode, "backend_source": str(event.get("source", ""))}}

    def _round_label(self, event: dict[str, Any]) -> str:
        return f"Round {event.get('round', 1)}"

    def _on_assessment(self, event: dict[str, Any]) -> dict[str, Any]:
        info = super()._on_assessment(event)
        rnd = int(event.get("round", 1))
        self._assessments[rnd] = info
        action = bpy.data.actions.get(self._actions_by_round.get(rnd, ""))
        if action is not None:
            actions.update_info(action, assessment=info["assessment"], refinement=info["refinement"])
            self._note_edit(f"IRG Motion: assessment of {action.name}")
        return info

    def _on_done(self, event: dict[str, Any]) -> None:
        reason = event.get("stop_reason", "")
        if self._request_motions == 0 and self._fall_back("the reasoning trace held no complete motion"):
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
        super()._on_error(event)

    def _fall_back(self, why: str) -> bool:
        """Re-ask once in direct mode after an interleaved trace without a motion."""
        if self.mode != "interleaved" or self.fell_back:
            return False
        self.fell_back = True
        self.mode = "direct"
        self._request_motions = 0
        self._round_tokens = 0
        self._send()
        self._set_status(f"Retrying in direct mode: {why}.")
        return True

    # -- live preview ------------------------------------------------------------------

    def _idle(self) -> None:
        """Key a solved preview; hand the latest pending one to the solver, at most once per preview_interval."""
        if self._cancel_sent:
            return
        try:
            self._key_solved_preview()
            self._submit_preview()
        except ValueError as exc:  # a preview that cannot be keyed is skipped; the final motion will say why
            self._pending_preview = None
            self._set_status(f"Preview skipped: {exc}")

    def _submit_preview(self) -> None:
        event = self._pending_preview
        if event is None or time.monotonic() - self._preview_at < self.preview_interval:
            return
        armature = self._armature()
        if armature is None:
            return
        if self._preview_solver is None:
            self._preview_solver = self._new_solver(armature, "irg-motion-preview")
        if self._preview_solver.busy:
            return
        self._pending_preview = None
        self._preview_at = time.monotonic()
        self.previews_solved += 1
        self._preview_solver.submit(protocol.decode_array(event["joints"]), float(event.get("fps", 20.0)))

    def _key_solved_preview(self) -> None:
        channels = self._preview_solver.take() if self._preview_solver is not None else None
        armature = bpy.data.objects.get(self.armature_name or "")
        if channels is None or armature is None or armature.type != "ARMATURE":
            return
        prov = self._provisional
        action = bpy.data.actions.get(prov.action) if prov is not None else None
        if action is None:
            anim = armature.animation_data
            restore = anim.action.name if anim is not None and anim.action is not None else ""
            action = compat.new_action(PREVIEW_NAME)
            action[PREVIEW_MARK] = True
            prov = self._provisional = _Provisional(action.name, armature.name, restore)
        actions.key_channels(action, armature, channels, "LINEAR")
        for name in channels.bone_names:
            bone = armature.pose.bones[name]
            if bone.rotation_mode != "QUATERNION":
                prov.modes.setdefault(name, bone.rotation_mode)
                bone.rotation_mode = "QUATERNION"
        anim = armature.animation_data
        if anim is None or anim.action != action:
            compat.assign_action(armature, action)
        self.previews_written += 1

    @staticmethod
    def _restore_preview_modes(prov: _Provisional | None) -> None:
        """Give the bones the preview switched to quaternions their old rotation modes back."""
        armature = bpy.data.objects.get(prov.armature) if prov is not None else None
        if armature is None or armature.pose is None:
            return
        for name, mode in prov.modes.items():
            bone = armature.pose.bones.get(name)
            if bone is not None:
                bone.rotation_mode = mode
        prov.modes.clear()

    def _drop_preview(self, *, restore: bool) -> None:
        """Remove the provisional Action; with restore, the armature plays what it played before."""
        self._pending_preview = None
        self._preview_solver = None
        prov, self._provisional = self._provisional, None
        if prov is None:
            return
        action = bpy.data.actions.get(prov.action)
        armature = bpy.data.objects.get(prov.armature)
        if restore and armature is not None and armature.type == "ARMATURE":
            self._restore_preview_modes(prov)
            anim = armature.animation_data
            if anim is not None and (anim.action is None or anim.action == action):
                compat.assign_action(armature, bpy.data.actions.get(prov.restore) if prov.restore else None)
        if action is not None:
            bpy.data.actions.remove(action)

    def _cleanup(self) -> None:
        self._version = None  # a motion still being solved is never written
        self._drop_preview(restore=True)
        if self._made_rig and not self.action_names:
            self._remove_made_rig()

    def _remove_made_rig(self) -> None:
        obj = bpy.data.objects.get(self.armature_name or "")
        if obj is None:
            return
        data = obj.data
        bpy.data.objects.remove(obj)
        if data is not None and data.users == 0:
            bpy.data.armatures.remove(data)
        self.armature_name, self._made_rig = None, False

    # -- helpers ---------------------------------------------------------------------

    def _armature(self) -> bpy.types.Object | None:
        if self.armature_name is None:
            with window_context():  # making bones runs mode_set, which needs a window in a UI timer
                found = rig.find_target_armature(bpy.context)
                armature = found or rig.create_default_rig(bpy.context)
            self._made_rig = found is None
            self.armature_name = armature.name
            return armature
        armature = bpy.data.objects.get(self.armature_name)
        if armature is None or armature.type != "ARMATURE":
            self.fail(f"The armature {self.armature_name!r} was deleted during the generation; "
                      "select an armature and generate again.")
            return None
        return armature

    def _cancelled_text(self) -> str:
        return f"Cancelled; kept {self._versions_text()}."

    def _versions_text(self) -> str:
        if not self.action_names:
            return "no versions"
        return f"{len(self.action_names)} version(s) ({', '.join(self.action_names)})"


class RefineJob(GenerateJob):
    """A version (or any Action) refined by the model: one new version, its parent recorded.

    instruction None: the model assesses the motion and writes its own instruction."""

    kind = "refine"

    def __init__(self, client: BackendClient, armature_name: str, source_name: str, prompt: str,
                 motion: dict[str, Any], settings: Settings, *, instruction: str | None = None,
                 parent_round: int = 1, preview: bool = False):
        super().__init__(client, armature_name, prompt, settings, preview=preview)
        self.source_name = source_name
        self.motion = motion
        self.instruction = (instruction or "").strip() or None
        self.parent_round = int(parent_round)
        self.mode = "refine"
        self.used_instruction = self.instruction or ""
        self.source_assessment = ""

    def request(self) -> dict[str, Any]:
        return {"type": "refine", "prompt": self.prompt, **self.motion, "instruction": self.instruction,
                "max_motion_tokens": self.settings.max_motion_tokens, "preview": self.preview,
                **self.settings.sampling_fields()}

    def working_text(self) -> str:
        return f"Refining {self.source_name}..."

    def _round_label(self, event: dict[str, Any]) -> str:
        return f"Refining {self.source_name}"

    def _on_assessment(self, event: dict[str, Any]) -> dict[str, Any]:
        info = BackendJob._on_assessment(self, event)  # about the given motion: the parent
        self.source_assessment = info["assessment"]
        self.used_instruction = self.instruction or info["refinement"]
        return info

    def _version_fields(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": self.prompt, "round": self.parent_round + 1, "source": "refine",
                "parent": self.source_name, "assessment": "", "refinement": "",
                "extra": {"mode": "refine", "backend_source": str(event.get("source", "")),
                          "instruction": self.used_instruction, "instruction_by": "user" if self.instruction
                          else "model", "parent_assessment": self.source_assessment}}

    def _on_done(self, event: dict[str, Any]) -> None:
        reason = event.get("stop_reason", "")
        if reason == "satisfied" and not self.action_names:
            self._finish("done", f"The model finds {self.source_name} satisfactory (No refinements needed.): "
                                 "nothing to refine. Write an instruction to refine it anyway.")
        elif not self.action_names:
            self.fail(f"The model produced no refined motion (stop reason: {reason or 'unknown'}): "
                      "try another instruction or a temperature above 0.")
        else:
            elapsed = time.monotonic() - self.started_at
            self._finish("done", f"Refined {self.source_name} in {elapsed:.1f} s: {self.action_names[-1]}.")


class CritiqueJob(BackendJob):
    """The model's assessment of an Action and its proposed refinement instruction.

    A version keeps them in its metadata; the panel's instruction field gets the proposal."""

    kind = "critique"

    def __init__(self, client: BackendClient, action_name: str, prompt: str, motion: dict[str, Any],
                 settings: Settings):
        super().__init__(client, settings)
        self.action_name = action_name
        self.prompt = prompt.strip()
        self.motion = motion
        self.result: dict[str, Any] | None = None

    def request(self) -> dict[str, Any]:
        return {"type": "critique", "prompt": self.prompt, **self.motion, **self.settings.sampling_fields()}

    def working_text(self) -> str:
        return f"Critiquing {self.action_name}..."

    def _on_assessment(self, event: dict[str, Any]) -> dict[str, Any]:
        info = super()._on_assessment(event)
        self.result = info
        action = bpy.data.actions.get(self.action_name)
        if action is not None and actions.version_info(action):
            actions.update_info(action, assessment=info["assessment"], refinement=info["refinement"])
            self._note_edit(f"IRG Motion: critique of {action.name}")
        rt = props.runtime()
        if rt is not None:  # once, so the animator's edits to the instruction are never overwritten
            rt.review_action, rt.review_assessment = self.action_name, info["assessment"]
            rt.review_refinement = info["refinement"]
            rt.instruction = "" if info["satisfied"] else info["refinement"]
        return info

    def _on_done(self, event: dict[str, Any]) -> None:
        if self.result is None:
            self.fail("The model wrote no assessment: raise Max Trace Tokens, or try again with a temperature above 0.")
        elif self.result["satisfied"]:
            self._finish("done", f"The model finds {self.action_name} satisfactory (No refinements needed.).")
        else:
            self._finish("done", f"Critique of {self.action_name} done: edit the instruction if you like, "
                                 "then press Refine.")


class CaptionJob(BackendJob):
    """The model's description of an Action ("Describe motion"); a version keeps it in its metadata."""

    kind = "caption"

    def __init__(self, client: BackendClient, action_name: str, motion: dict[str, Any], settings: Settings):
        super().__init__(client, settings)
        self.action_name = action_name
        self.motion = motion
        self.caption: str | None = None

    def request(self) -> dict[str, Any]:
        return {"type": "caption", **self.motion, **self.settings.sampling_fields()}

    def working_text(self) -> str:
        return f"Describing {self.action_name}..."

    def _on_caption(self, event: dict[str, Any]) -> None:
        self.caption = str(event.get("text", ""))
        action = bpy.data.actions.get(self.action_name)
        if action is not None and actions.version_info(action):
            set_meta(action, caption=self.caption)
            self._note_edit(f"IRG Motion: caption of {action.name}")
        rt = props.runtime()
        if rt is not None:
            rt.review_action, rt.caption = self.action_name, self.caption

    def _on_done(self, event: dict[str, Any]) -> None:
        if self.caption is None:
            self.fail("The model wrote no description: try again with a temperature above 0.")
        else:
            self._finish("done", f"Described {self.action_name}.")


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
