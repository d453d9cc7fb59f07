"""Critique & Refine: the model's assessment of what the armature plays, refining it into a new
version with an editable instruction, and describing it in words."""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from .. import props
from ..anim import actions
from ..jobs.base import manager
from ..jobs.extend import start_extend
from ..jobs.generate import PREVIEW_MARK
from ..jobs.review import resolve_action, review_target, start_caption, start_critique, start_refine
from ..props import SATISFIED, runtime, scene_prompt
from ..rig.mapping import target_armature
from .versions import ActionOperator, active_action
from ..registration import register_classes, unregister_classes
from .widgets import REFUSALS, SubPanel, refuse, wrapped_labels


class IRG_PT_review(SubPanel, bpy.types.Panel):
    """Critique & refine what the armature plays (a version, or any animation); describe it."""

    bl_label = "Critique & Refine"

    def draw(self, context):
        layout = self.layout
        rt = runtime(context)
        armature = target_armature(context)
        action = active_action(armature)
        if rt is None or action is None:
            layout.label(text="Select an armature that plays a version or an animation.")
            return
        if action.get(PREVIEW_MARK):
            layout.label(text="Live preview: wait for the motion to finish.", icon="SORTTIME")
            return
        info = actions.version_info(action)
        kind = f"round {info.get('round', '?')}" if info else "not a version: it is sampled from the rig"
        layout.label(text=f"{action.name} ({kind})", icon="ACTION")
        if not info and not scene_prompt(context.scene):
            layout.label(text="Type in the prompt what this motion should show.", icon="INFO")
        row = layout.row(align=True)
        row.enabled = not manager.busy()
        row.operator("irg.critique", icon="VIEWZOOM")
        row.operator("irg.caption", icon="TEXT")
        current = rt.review_action == action.name
        assessment = rt.review_assessment if current else info.get("assessment", "")
        if assessment:
            wrapped_labels(layout.box(), f"Assessment: {assessment}", icon="VIEWZOOM", max_lines=10)
        proposal = rt.review_refinement if current else info.get("refinement", "")
        if proposal == SATISFIED:
            layout.label(text="The model needs no refinement; write an instruction to refine anyway.",
                         icon="CHECKMARK")
        elif proposal and proposal != rt.instruction:
            wrapped_labels(layout, f"Model's proposal: {proposal}", icon="LIGHT", max_lines=6)
        layout.label(text="Instruction (empty: the model decides):")
        layout.prop(rt, "instruction", text="")
        row = layout.row()
        row.scale_y = 1.2
        row.enabled = not manager.busy()
        row.operator("irg.refine", text="Refine into a New Version", icon="MOD_SMOOTH")
        caption = rt.caption if current else info.get("caption", "")
        if caption:
            wrapped_labels(layout.box(), f"Caption: {caption}", icon="TEXT", max_lines=10)
        _draw_extend(layout.box(), context)


def _draw_extend(layout, context) -> None:
    """Extend: what happens next and for how long; the button."""
    scene_props = context.scene.irg_motion
    layout.label(text="Extend: continue from the end of this motion", icon="NEXT_KEYFRAME")
    layout.prop(scene_props, "extend_prompt")
    row = layout.row(align=True)
    row.prop(scene_props, "extend_seconds")
    sub = row.row(align=True)
    sub.enabled = not manager.busy()
    sub.operator("irg.extend", icon="FORWARD")


class _ReviewOperator(ActionOperator):
    """Critique / Refine / Describe: on `action`, else the target armature's active Action."""

    @classmethod
    def poll(cls, context):
        return not manager.busy()

    def _inputs(self, context):
        armature, active = review_target(context)
        return (self.action or active), armature

    def _start(self, context, start, **kwargs) -> set[str]:
        """Start a job on the Action; one that is not a version takes the scene's prompt."""
        action, armature = self._inputs(context)
        if action is None:
            return refuse(self, "Nothing to work on: select an armature that plays a version or an animation.",
                          context)
        try:
            if start is not start_caption and not actions.version_info(resolve_action(action)):
                kwargs["prompt"] = props.scene_prompt(context.scene)
            start(context, action, armature=armature, **kwargs)
        except REFUSALS as exc:
            return refuse(self, exc, context)
        return {"FINISHED"}

class IRG_OT_critique(_ReviewOperator, bpy.types.Operator):
    """Ask the model to assess the motion and propose how to refine it"""

    bl_idname = "irg.critique"
    bl_label = "Critique"

    def execute(self, context):
        return self._start(context, start_critique)

class IRG_OT_refine(_ReviewOperator, bpy.types.Operator):
    """Refine the motion with the instruction (empty: the model decides) into a new version"""

    bl_idname = "irg.refine"
    bl_label = "Refine"
    bl_options = {"REGISTER", "UNDO"}

    instruction: StringProperty(name="Instruction", options={"SKIP_SAVE"},
                                description="Empty: the instruction in the panel")

    def execute(self, context):
        rt = props.runtime(context)
        instruction = self.instruction or (rt.instruction if rt is not None else "")
        scene_props = getattr(context.scene, "irg_motion", None)
        return self._start(context, start_refine, instruction=instruction or None,
                           preview=bool(scene_props and scene_props.preview))

class IRG_OT_caption(_ReviewOperator, bpy.types.Operator):
    """Ask the model to describe the motion in words"""

    bl_idname = "irg.caption"
    bl_label = "Describe Motion"

    def execute(self, context):
        return self._start(context, start_caption)


class IRG_OT_extend(_ReviewOperator, bpy.types.Operator):
    """Continue the motion: its last 2 s start the model's next motion; the result is a new version"""

    bl_idname = "irg.extend"
    bl_label = "Extend"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        scene_props = context.scene.irg_motion
        action, armature = self._inputs(context)
        if action is None:
            return refuse(self, "Nothing to extend: select an armature that plays a version or an animation.",
                          context)
        try:
            start_extend(context, action, scene_props.extend_prompt, seconds=scene_props.extend_seconds,
                         armature=armature)
        except REFUSALS as exc:
            return refuse(self, exc, context)
        return {"FINISHED"}


CLASSES = (IRG_PT_review, IRG_OT_critique, IRG_OT_refine, IRG_OT_caption, IRG_OT_extend)


def register() -> None:
    register_classes(CLASSES)


def unregister() -> None:
    unregister_classes(CLASSES)
