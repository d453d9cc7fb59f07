"""Generate: the prompt (typed, from a Text or a preset), Generate/Cancel (also Esc in the 3D View),
progress and status, and the streamed reasoning.

Every operator that changes the scene has the UNDO option (one undo step each); what a
job writes later from the UI timer pushes its own step (jobs.base._tick).
"""
from __future__ import annotations

import json
from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..jobs.base import manager
from ..jobs.generate import start_generation
from ..props import runtime, scene_prompt
from ..registration import register_classes, unregister_classes
from ..rig.mapping import target_armature
from ..settings import ADDON_ID, get_settings
from .widgets import REFUSALS, SidebarPanel, SubPanel, WRAP, one_line, refuse, wrapped_labels

LEVEL_ICONS = {"IDLE": "INFO", "RUNNING": "SORTTIME", "DONE": "CHECKMARK", "ERROR": "ERROR",
               "CANCELLED": "CANCEL"}
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "presets" / "prompts"
KIND_LABELS = {"generate": "Generate", "refine": "Refine", "critique": "Critique", "caption": "Describe", "batch": "Batch"}


def setup_problem() -> str:
    """'' when a backend and model are configured, else what to set (never raises)."""
    try:
        s = get_settings()
    except ValueError as exc:
        return str(exc)
    missing = [name for name, value in (("Backend Python", s.backend_python), ("Model Folder", s.model_dir))
               if not value]
    if missing:
        return f"Set {' and '.join(missing)} in Preferences > Add-ons > IRG Motion."
    return ""

def prompt_presets(folder: Path = PROMPTS_DIR) -> list[tuple[str, list[str]]]:
    """(name, prompts) of every presets/prompts/*.json; a broken file shows as its problem."""
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            prompts = [str(p) for p in data["prompts"] if str(p).strip()]
            found.append((str(data.get("name") or path.stem), prompts))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            found.append((f"{path.name}: unreadable ({exc})", []))
    return found

class IRG_MT_prompt_presets(bpy.types.Menu):
    """Prompt presets from presets/prompts/*.json."""

    bl_idname = "IRG_MT_prompt_presets"
    bl_label = "Prompt Presets"

    def draw(self, context):
        layout = self.layout
        groups = prompt_presets()
        if not groups:
            layout.label(text=f"No prompt presets in {PROMPTS_DIR}")
        for i, (name, prompts) in enumerate(groups):
            if i:
                layout.separator()
            layout.label(text=name, icon="PRESET")
            for prompt in prompts:
                layout.operator("irg.use_prompt", text=one_line(prompt, 70)).prompt = prompt

class IRG_PT_generate(SidebarPanel, bpy.types.Panel):
    """Prompt, Generate/Cancel, progress and the status line."""

    bl_label = "Generate"

    def draw(self, context):
        layout = self.layout
        scene_props = getattr(context.scene, "irg_motion", None)
        rt = runtime(context)
        if scene_props is None or rt is None:
            layout.label(text="IRG Motion is not registered.", icon="ERROR")
            return
        row = layout.row(align=True)
        if scene_props.prompt_text is None:
            row.prop(scene_props, "prompt", text="")
        else:
            row.label(text=f"Prompt from the text {scene_props.prompt_text.name!r}", icon="TEXT")
        row.menu("IRG_MT_prompt_presets", text="", icon="PRESET")
        layout.prop(scene_props, "prompt_text", text="Text", icon="TEXT")
        prompt = scene_prompt(context.scene)
        if len(prompt) > WRAP or scene_props.prompt_text is not None:
            wrapped_labels(layout.box(), prompt or "(the text is empty)", max_lines=8)
        layout.prop(scene_props, "preview")
        row = layout.row(align=True)
        row.scale_y = 1.4
        if manager.busy():
            row.operator("irg.cancel", text="Cancel (Esc)", icon="CANCEL")
        else:
            row.operator("irg.generate", text="Generate", icon="PLAY")
        target = target_armature(context)
        layout.label(text=f"Armature: {target.name}" if target is not None
                     else "No armature: a default rig will be created", icon="ARMATURE_DATA")
        problem = setup_problem()
        if problem:
            wrapped_labels(layout.box(), problem, icon="PREFERENCES")
            layout.operator("preferences.addon_show", text="Open Preferences").module = ADDON_ID
        if rt.status:
            box = layout.box()
            if rt.running:
                label = KIND_LABELS.get(rt.job_kind, "Working")
                box.progress(factor=rt.progress, type="BAR", text=f"{label}: {rt.progress:.0%}")
            wrapped_labels(box, rt.status, icon=LEVEL_ICONS.get(rt.level, "INFO"))

class IRG_PT_trace(SubPanel, bpy.types.Panel):
    """The model's analysis and each round's assessment and refinement, as they stream."""

    bl_label = "Reasoning"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        rt = runtime(context)
        if rt is None or not (rt.trace or rt.assessment):
            self.layout.label(text="No reasoning yet.")
            return
        if rt.assessment:
            wrapped_labels(self.layout.box(), rt.assessment, icon="VIEWZOOM")
        if rt.trace:
            wrapped_labels(self.layout, rt.trace, max_lines=40)


class IRG_OT_generate(bpy.types.Operator):
    """Generate a motion from the prompt and key it onto the armature as a new version"""

    bl_idname = "irg.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER", "UNDO"}

    prompt: StringProperty(name="Prompt", description="Empty: the scene's prompt", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return not manager.busy()

    def execute(self, context):
        prompt = self.prompt or scene_prompt(context.scene)
        scene_props = getattr(context.scene, "irg_motion", None)
        try:
            job = start_generation(context, prompt, preview=bool(scene_props and scene_props.preview))
        except REFUSALS as exc:
            return refuse(self, exc, context)
        if job.armature_name is None:
            self.report({"INFO"}, "No armature selected: a default rig is created when the motion arrives.")
        return {"FINISHED"}

class IRG_OT_cancel(bpy.types.Operator):
    """Stop the running request (versions already written are kept; the live preview goes)"""

    bl_idname = "irg.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return manager.busy()  # when idle, Esc passes on to Blender's own keymaps

    def execute(self, context):
        manager.cancel()
        return {"FINISHED"}

class IRG_OT_use_prompt(bpy.types.Operator):
    """Use this prompt"""

    bl_idname = "irg.use_prompt"
    bl_label = "Use Prompt"
    bl_options = {"REGISTER", "UNDO"}

    prompt: StringProperty(name="Prompt", options={"SKIP_SAVE"})

    def execute(self, context):
        scene_props = context.scene.irg_motion
        scene_props.prompt = self.prompt
        scene_props.prompt_text = None  # the field is the prompt again
        return {"FINISHED"}


CLASSES = (IRG_MT_prompt_presets, IRG_PT_generate, IRG_PT_trace, IRG_OT_generate, IRG_OT_cancel, IRG_OT_use_prompt)

_keymap_items: list = []


def register_keymaps() -> None:
    """Esc cancels the running request in the 3D View (no keyconfig headless: nothing to do)."""
    keyconfigs = getattr(bpy.context.window_manager, "keyconfigs", None)
    addon = keyconfigs.addon if keyconfigs is not None else None
    if addon is None or _keymap_items:
        return
    keymap = addon.keymaps.new(name="3D View", space_type="VIEW_3D")
    _keymap_items.append((keymap, keymap.keymap_items.new(IRG_OT_cancel.bl_idname, "ESC", "PRESS")))

def unregister_keymaps() -> None:
    """Remove what register_keymaps added."""
    while _keymap_items:
        keymap, item = _keymap_items.pop()
        try:
            keymap.keymap_items.remove(item)
        except (ReferenceError, RuntimeError):  # the keyconfig went away first (Blender quitting)
            pass


def register() -> None:
    """The classes, and Esc cancelling in the 3D View."""
    register_classes(CLASSES)
    register_keymaps()


def unregister() -> None:
    unregister_keymaps()
    unregister_classes(CLASSES)
