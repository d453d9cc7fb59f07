"""Review: the model's view of an existing Action (a version, or any animation on an armature).

- RefineJob: an Action plus an instruction -> one new version whose parent is recorded.
- CritiqueJob: the model's assessment and proposed instruction for an Action.
- CaptionJob: the model's description of an Action.

The start_* functions are the shared path of the operators and the scripting api:
they validate everything before anything is spawned or written.
"""
from __future__ import annotations

import time
from typing import Any

import bpy

from .. import props
from ..anim import actions
from ..backend import registry
from ..backend.base import Backend
from ..rig import armature as rig
from ..settings import Settings, get_settings
from .base import BackendJob, check_idle, check_token_count, manager, motion_source, set_meta
from .generate import PREVIEW_MARK, GenerateJob

class RefineJob(GenerateJob):
    """A version (or any Action) refined by the model: one new version, its parent recorded.

    instruction None: the model assesses the motion and writes its own instruction."""

    kind = "refine"

    def __init__(self, client: Backend, armature_name: str, source_name: str, prompt: str,
                 motion: dict[str, Any], settings: Settings, *, instruction: str | None = None,
                 parent_round: int = 1, preview: bool = False, source_edited: bool = False):
        super().__init__(client, armature_name, prompt, settings, preview=preview)
        self.source_name = source_name
        self.source_edited = bool(source_edited)  # a version edited by hand: its sampled keys were sent
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
                          else "model", "parent_assessment": self.source_assessment,
                          "source_edited": self.source_edited}}

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

    def __init__(self, client: Backend, action_name: str, prompt: str, motion: dict[str, Any],
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
            extra = actions.version_info(action)["extra"]
            if actions.is_edited(action):  # the assessment is of the animator's edited keys
                extra = {**extra, "assessed_edited_keys": True}
            actions.update_info(action, assessment=info["assessment"], refinement=info["refinement"], extra=extra)
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

    def __init__(self, client: Backend, action_name: str, motion: dict[str, Any], settings: Settings):
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


def resolve_action(action) -> bpy.types.Action:
    """An Action from an Action or its name (ValueError naming the fix)."""
    if isinstance(action, bpy.types.Action):
        return action
    found = bpy.data.actions.get(str(action or ""))
    if found is None:
        raise ValueError(f"No Action named {action!r} in this file: pick a version in the IRG Motion panel "
                         "or select an animated armature.")
    return found


def version_armature(action: bpy.types.Action, fallback=None) -> bpy.types.Object | None:
    """The armature a version was made for (found by its rig id, so renaming it is fine), else `fallback`."""
    info = actions.version_info(action)
    rid = info.get("armature_id")
    if rid:
        for obj in bpy.data.objects:
            if obj.type == "ARMATURE" and obj.get(actions.RIG_ID) == rid:
                return obj
    return fallback


def review_target(context) -> tuple[bpy.types.Object | None, bpy.types.Action | None]:
    """The target armature and the Action it plays: what Critique, Refine and Describe work on."""
    armature = rig.find_target_armature(context)
    anim = armature.animation_data if armature is not None else None
    return armature, anim.action if anim is not None else None


def _review_inputs(context, action, armature, prompt: str | None, overrides: dict, *, need_prompt: bool):
    """Shared checks of critique / refine / caption: (action, armature, prompt, motion, settings, backend).

    The motion is read last (sampling hand-keyed animation takes a moment), after every check."""
    check_idle()
    action = resolve_action(action)
    if action.get(PREVIEW_MARK):
        raise ValueError("This is the live preview, not a version: wait for the generation to finish.")
    info = actions.version_info(action)
    armature = version_armature(action, armature or rig.find_target_armature(context))
    prompt = (prompt or info.get("prompt") or "").strip()
    if need_prompt and not prompt:
        raise ValueError(f"{action.name!r} is not a generated version, so it has no prompt: type in the prompt "
                         "what the motion should show, then try again.")
    check_token_count(action)  # before a backend is started for a motion it would refuse
    settings = get_settings(**overrides)
    backend = registry.client_for(settings)
    motion = motion_source(action, armature)  # samples hand-keyed animation (ValueError if it cannot)
    return action, armature, prompt, motion, settings, backend


def start_critique(context, action, *, armature=None, prompt: str | None = None, **overrides) -> CritiqueJob:
    """Ask the model to assess an Action (a version, or any animation on an armature).

    prompt: what the motion should show (default: a version's own prompt; needed for other Actions)."""
    action, _armature, prompt, motion, settings, backend = _review_inputs(context, action, armature, prompt,
                                                                          overrides, need_prompt=True)
    job = CritiqueJob(backend, action.name, prompt, motion, settings)
    manager.start(job)
    return job


def start_refine(context, action, instruction: str | None = None, *, armature=None, prompt: str | None = None,
                 preview: bool = False, **overrides) -> RefineJob:
    """Refine an Action into a new version of its armature (parent recorded, round = parent's + 1).

    instruction None or empty: the model assesses the motion and writes its own."""
    action, armature, prompt, motion, settings, backend = _review_inputs(context, action, armature, prompt,
                                                                         overrides, need_prompt=True)
    if armature is None:
        raise ValueError(f"No armature to key the refined {action.name!r} on: select an armature.")
    rig.check_armature(armature)
    parent_round = int(actions.version_info(action).get("round", 1) or 1)
    job = RefineJob(backend, armature.name, action.name, prompt, motion, settings, instruction=instruction,
                    parent_round=parent_round, preview=preview, source_edited=actions.is_edited(action))
    manager.start(job)
    return job


def start_caption(context, action, *, armature=None, **overrides) -> CaptionJob:
    """Ask the model to describe an Action in words."""
    action, _armature, _prompt, motion, settings, backend = _review_inputs(context, action, armature, "", overrides,
                                                                           need_prompt=False)
    job = CaptionJob(backend, action.name, motion, settings)
    manager.start(job)
    return job
