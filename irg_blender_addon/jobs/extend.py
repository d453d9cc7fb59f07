"""Extend: continue any version or hand-keyed Action with new motion, as a new version.

The job sends two requests to the backend. First `encode`: the last TAIL_SECONDS of
the source (its joints at the model's frame rate: a version's own, or the Action
sampled on the armature) become motion tokens. Then `generate` with those tokens as
`prefix_tokens`: every motion span the model writes starts with them, so it
continues the source (interleaved, with its assessment and refinement rounds as
usual, or direct). Each motion that arrives is joined onto the source
(rig_math.seam.join: placed where the source ends, the overlap blended) and written as a
version through GenerateJob's path, its parent and the frame where the new motion
starts recorded in its metadata (extra: extend_frame, prefix_tokens, tail_seconds).
"""
from __future__ import annotations

from typing import Any

import bpy
import numpy as np

from ..anim import actions
from ..backend import registry
from ..backend.base import Backend
from ..core import protocol, seam
from ..rig import armature as rig
from ..rig import pose, sampling
from ..settings import Settings, get_settings
from .base import check_idle, manager
from .batch import model_fps
from .generate import PREVIEW_MARK, GenerateJob
from .review import resolve_action, version_armature

MAX_MOTION_TOKENS = 50           # docs/protocol.md: a motion span holds at most 50 tokens
DEFAULT_SECONDS = 4.0
CONTINUE_PROMPT = "the person continues the motion"  # when neither the user nor the source gives one


def source_motion(action: bpy.types.Action, armature: bpy.types.Object | None,
                  rate: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The Action's joints (T, 22, 3; Blender axes) at `rate` fps, and its contacts (T, 4) or None.

    A version gives the joints it was made from; any other Action, and a version whose keys
    the animator edited (actions.is_edited), is sampled on `armature` (ValueError when there
    is none, or it cannot be sampled)."""
    info = actions.version_info(action)
    if info and action.get(actions.JOINTS_KEY) is not None and not actions.is_edited(action):
        joints, contacts = actions.source_motion(action)
        fps = float(info.get("src_fps", rate))
    else:
        if armature is None:
            raise ValueError(f"Action {action.name!r} is not an IRG Motion version, or was edited by hand: "
                             "select the armature it animates, so it can be sampled.")
        sampled = sampling.sample_action(armature, action)
        joints, contacts, fps = sampled.joints, None, float(sampled.fps)
    if abs(fps - rate) > 1e-6:
        joints = pose.resample(joints, fps, rate)
        contacts = None if contacts is None else pose.resample(contacts, fps, rate)
    return np.asarray(joints, dtype=np.float64), contacts


def new_tokens(seconds: float, rate: float) -> int:
    """Tokens of new motion for `seconds` (at least 2)."""
    return max(2, int(round(float(seconds) * rate / seam.FRAMES_PER_TOKEN)))


class ExtendJob(GenerateJob):
    """Continue `source_name` (on `armature_name`) with `seconds` of new motion; one version per round."""

    kind = "extend"

    def __init__(self, client: Backend, armature_name: str, source_name: str, prompt: str,
                 source: np.ndarray, contacts: np.ndarray | None, settings: Settings, *, rate: float = 20.0,
                 seconds: float = DEFAULT_SECONDS):
        super().__init__(client, armature_name, prompt, settings, preview=False)
        self.source_name = source_name
        self.source = source
        self.source_contacts = contacts
        self.rate = float(rate)
        self.seconds = float(seconds)
        self.tail = seam.tail_slice(len(source), self.rate)   # ValueError for a too-short source
        forced = (self.tail.stop - self.tail.start - 1) // seam.FRAMES_PER_TOKEN
        room = (MAX_MOTION_TOKENS - forced) * seam.FRAMES_PER_TOKEN / self.rate
        if not 0 < self.seconds <= room + 1e-6:
            raise ValueError(f"The new motion can be up to {room:g} s long (one motion holds "
                             f"{MAX_MOTION_TOKENS * seam.FRAMES_PER_TOKEN / self.rate:g} s, the end of "
                             f"{source_name} takes {forced * seam.FRAMES_PER_TOKEN / self.rate:g} s of it), "
                             f"not {self.seconds:g} s.")
        self.phase = "encode"             # then "generate"
        self.prefix: list[int] = []
        self.seams: dict[int, int] = {}   # round -> index of the first new frame (at `rate`)
        self.source_edited = False        # a version edited by hand: its keys were sampled

    def request(self) -> dict[str, Any]:
        if self.phase == "encode":
            return {"type": "encode", "joints": protocol.encode_array(self.source[self.tail].astype(np.float32)),
                    "fps": self.rate}
        limit = min(MAX_MOTION_TOKENS, len(self.prefix) + new_tokens(self.seconds, self.rate))  # checked above
        return {**self.settings.generate_request(self.prompt, self.mode), "preview": False,
                "prefix_tokens": list(self.prefix), "max_motion_tokens": limit}

    def working_text(self) -> str:
        if self.phase == "encode":
            return f"Encoding the end of {self.source_name}..."
        return f"Extending {self.source_name}..."

    def _round_label(self, event: dict[str, Any]) -> str:
        return f"Extending {self.source_name} (round {event.get('round', 1)})"

    def _on_encoded(self, event: dict[str, Any]) -> None:
        self.prefix = [int(t) for t in event.get("tokens") or ()]

    def _on_done(self, event: dict[str, Any]) -> None:
        """The encode ended: send the generation; the generation ended: as GenerateJob."""
        if self.phase == "generate":
            super()._on_done(event)
        elif not self.prefix:
            self.fail("The backend encoded no tokens for the end of the motion: check the model folder's VQ-VAE.")
        else:
            self.phase = "generate"
            self._send()
            self._set_status(self.working_text())

    def _on_motion(self, event: dict[str, Any]) -> None:
        """Join the continuation onto the source, then write it as GenerateJob writes any motion."""
        if len(self.prefix) + 1 > len(event.get("tokens") or ()):
            self.fail("The model added nothing after the forced tokens: try again with a temperature above 0.")
            return
        joined = seam.join(self.source, protocol.decode_array(event["joints"]), len(self.prefix))
        self.seams[int(event.get("round", 1))] = joined.seam
        contacts = None
        if self.source_contacts is not None and event.get("contacts"):
            contacts = np.concatenate([self.source_contacts[:joined.overlap.start],
                                       protocol.decode_array(event["contacts"])])
        joined_event = {**event, "joints": protocol.encode_array(joined.joints.astype(np.float32)),
                        "contacts": protocol.encode_array(contacts) if contacts is not None else None,
                        "fps": self.rate}
        super()._on_motion(joined_event)

    def _version_fields(self, event: dict[str, Any]) -> dict[str, Any]:
        fields = super()._version_fields(event)
        rnd = int(event.get("round", 1))
        scene = bpy.context.scene
        first_new = self.seams.get(rnd, 0)
        start_frame = scene.frame_start + first_new * pose.scene_fps(scene) / self.rate
        fields.update(source="extend", parent=self.source_name if rnd == 1 or not self.action_names
                      else self.action_names[-1])
        fields["extra"] = {**fields["extra"], "extended_from": self.source_name,
                           "extend_frame": round(float(start_frame), 3), "seam_index": first_new,
                           "prefix_tokens": len(self.prefix), "tail_seconds": seam.TAIL_SECONDS,
                           "new_seconds": self.seconds, "source_edited": self.source_edited}
        return fields


def start_extend(context, action, prompt: str | None = None, *, seconds: float = DEFAULT_SECONDS, armature=None,
                 **overrides) -> ExtendJob:
    """Continue an Action (a version, or any animation on an armature) with `seconds` of new motion.

    prompt: what happens next ("then he sits down"); empty: the source's own prompt, else
    "the person continues the motion". The new versions go on the source's armature.
    Raises ValueError (bad input), BackendError or RuntimeError (busy) before anything is sent."""
    check_idle()
    action = resolve_action(action)
    if action.get(PREVIEW_MARK):
        raise ValueError("This is the live preview, not a version: wait for the generation to finish.")
    target = version_armature(action, armature or rig.find_target_armature(context))
    if target is None:
        raise ValueError(f"No armature to extend {action.name!r} on: select the armature it animates.")
    rig.check_armature(target)
    settings = get_settings(**overrides)
    backend = registry.client_for(settings)
    rate = model_fps(settings)
    source, contacts = source_motion(action, target, rate)   # samples hand-keyed animation
    text = (prompt or "").strip() or actions.version_info(action).get("prompt", "") or CONTINUE_PROMPT
    job = ExtendJob(backend, target.name, action.name, text, source, contacts, settings, rate=rate,
                    seconds=seconds)
    job.source_edited = actions.is_edited(action)
    manager.start(job)
    return job
