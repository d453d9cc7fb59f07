"""Generate: a prompt -> one version per completed motion round, with the live preview.

Rotations are never solved on the main thread. A GenerateJob reads the rig and the
panel's retarget options (rig.mapping.retarget_options: preset, root mode, foot
locking, smoothing, IK legs) once, into a pose.ChannelPlan; a `motion` event then starts a
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

`start_generation` is the shared path of the Generate operator and the scripting api:
it validates everything before anything is spawned or written.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import bpy
import numpy as np

from ..anim import actions, compat
from ..backend import registry
from ..backend.base import Backend, BackendError
from ..core import protocol
from ..rig import mapping, pose
from ..rig import armature as rig
from ..settings import Settings, get_settings
from .base import BackendJob, check_idle, manager, window_context
from . import thumbnails
from .solve import ChannelSolver

PREVIEW_NAME = "~preview"
PREVIEW_MARK = "irg_preview"     # custom property on the provisional Action
PREVIEW_INTERVAL = 0.25          # seconds between two preview writes (the backend sends one per 8 tokens)


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

    def __init__(self, client: Backend, armature_name: str | None, prompt: str, settings: Settings,
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
        self._options: dict[str, Any] = {}      # retarget options (mapping.retarget_options) of the plan
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
            options = mapping.retarget_options(bpy.context, armature)
            self._plan = pose.plan_channels(armature, preset=options["preset"], root_mode=options["root_mode"],
                                            ik_legs=options["ik_legs"])
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
        if self.settings.thumbnails:
            thumbnails.queue.request([action.name])  # rendered by a worker process, after this pump

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



def start_generation(context, prompt: str, armature=None, *, preview: bool = False, **overrides) -> GenerateJob:
    """Validate everything, then start a GenerateJob (the shared path of the operator and api).

    Raises ValueError (empty prompt, bad setting), BackendError (backend or model
    missing) or RuntimeError (a job already runs) before anything is spawned or written.
    armature None: the target armature, else a default rig made when the first motion arrives.
    preview: key the motion on the armature while it streams (one provisional Action)."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("The prompt is empty: describe the motion to generate, "
                         "e.g. 'a person walks forward and waves'.")
    check_idle()
    settings = get_settings(**overrides)
    backend = registry.client_for(settings)
    if armature is None:
        armature = rig.find_target_armature(context)
    job = GenerateJob(backend, armature.name if armature is not None else None, prompt, settings, preview=preview)
    manager.start(job)
    return job
