"""Properties.

- Scene (saved with the file): the prompt, an optional Text datablock holding a
  multi-line prompt, the live-preview switch.
- WindowManager (runtime only, never saved or undone): what the running (or
  last) job is doing, its trace, and the Critique & refine state: the reviewed
  Action, the model's assessment, the instruction the animator may edit.
- Object: `irg_version_index`, the versions list's active row. It stores
  nothing: it reads and sets the armature's active Action, so the highlighted row
  is always the Action that plays, and clicking a row makes that version active
  (one undo step, like any property edit).
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .registration import register_classes, unregister_classes

STATUS_LEVELS = (("IDLE", "Idle", ""), ("RUNNING", "Running", ""), ("DONE", "Done", ""),
                 ("ERROR", "Error", ""), ("CANCELLED", "Cancelled", ""))
SATISFIED = "No refinements needed."  # the model's literal "nothing to refine"


class IRG_PG_scene(bpy.types.PropertyGroup):
    """Per-scene inputs, saved in the .blend."""

    prompt: StringProperty(name="Prompt", description="Describe the motion, e.g. "
                           "'a person walks forward and waves with the right hand'")
    prompt_text: PointerProperty(name="Prompt Text", type=bpy.types.Text,
                                 description="A text datablock holding the prompt (edit it in a Text Editor, "
                                             "several lines welcome); when set it is used instead of the field")
    preview: BoolProperty(name="Live Preview", default=True,
                          description="Show the motion on the armature while it is generated; "
                                      "the finished version replaces it")
    extend_prompt: StringProperty(name="Then", description="What happens next, e.g. 'then he sits down' "
                                  "(empty: the motion's own prompt)")
    extend_seconds: FloatProperty(name="Seconds", default=4.0, min=0.4, max=8.0, step=10, precision=1,
                                  description="Length of the new motion after the end of this one")


class IRG_PG_runtime(bpy.types.PropertyGroup):
    """What the running (or last) job is doing; the panels draw it."""

    status: StringProperty(name="Status")
    level: bpy.props.EnumProperty(name="Level", items=STATUS_LEVELS, default="IDLE")
    running: BoolProperty(name="Running")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    job_kind: StringProperty(name="Job", description="generate, refine, critique or caption")
    trace: StringProperty(name="Trace", description="The model's reasoning text so far")
    assessment: StringProperty(name="Assessment", description="Each round's assessment and refinement")
    review_action: StringProperty(name="Reviewed Action", description="The Action the assessment below is about")
    review_assessment: StringProperty(name="Model's Assessment")
    review_refinement: StringProperty(name="Model's Proposal", description="The refinement the model proposed")
    instruction: StringProperty(name="Instruction",
                                description="How the motion should change. The model's proposal after "
                                            "Critique; edit it or write your own. Empty: the model decides")
    caption: StringProperty(name="Caption", description="The model's description of the reviewed motion")


def _version_index_get(obj) -> int:
    anim = obj.animation_data
    action = anim.action if anim is not None else None
    return bpy.data.actions.find(action.name) if action is not None else -1


def _version_index_set(obj, value: int) -> None:
    from .anim import actions  # actions imports bpy-heavy modules; keep registration light
    if not 0 <= value < len(bpy.data.actions) or obj.type != "ARMATURE":
        return
    action = bpy.data.actions[value]
    if not actions.version_info(action):
        return
    try:
        actions.set_active_version(obj, action)
    except ValueError as exc:  # e.g. the armature is in Edit Mode: say so, change nothing
        rt = runtime()
        if rt is not None:
            rt.status, rt.level = str(exc), "ERROR"
        return
    review(action)


def review(action: bpy.types.Action | None) -> None:
    """Point the Critique & refine state at `action`: its stored assessment and refinement."""
    from .anim import actions
    rt = runtime()
    if rt is None:
        return
    info = actions.version_info(action) if action is not None else {}
    rt.review_action = action.name if action is not None else ""
    rt.review_assessment = info.get("assessment", "")
    refinement = info.get("refinement", "")
    rt.review_refinement = refinement
    rt.instruction = "" if refinement == SATISFIED else refinement
    rt.caption = info.get("caption", "")

CLASSES = (IRG_PG_scene, IRG_PG_runtime)


def register() -> None:
    """Register the property groups and attach them to the Scene, the WindowManager and Objects."""
    register_classes(CLASSES)
    bpy.types.Scene.irg_motion = PointerProperty(type=IRG_PG_scene)
    bpy.types.WindowManager.irg_motion = PointerProperty(type=IRG_PG_runtime)
    bpy.types.Object.irg_version_index = IntProperty(
        name="Version", get=_version_index_get, set=_version_index_set,
        description="The version that plays (the armature's active Action)")


def unregister() -> None:
    """Detach the property groups, then unregister them."""
    for owner, name in ((bpy.types.Scene, "irg_motion"), (bpy.types.WindowManager, "irg_motion"),
                        (bpy.types.Object, "irg_version_index")):
        if hasattr(owner, name):
            delattr(owner, name)
    unregister_classes(CLASSES)


def runtime(context=None) -> IRG_PG_runtime | None:
    """The WindowManager's runtime properties (None before registration)."""
    wm = (context or bpy.context).window_manager
    return getattr(wm, "irg_motion", None) if wm is not None else None


def scene_prompt(scene) -> str:
    """The prompt to generate from: the Text datablock's lines joined when one is set, else the field."""
    props = getattr(scene, "irg_motion", None)
    if props is None:
        return ""
    if props.prompt_text is not None:
        return " ".join(line.body.strip() for line in props.prompt_text.lines if line.body.strip())
    return props.prompt
