"""The N-panel (3D Viewport > Sidebar > IRG Motion).

- Generate: the prompt (a field, or a Text datablock for several lines), prompt
  presets, live preview, Generate / Cancel, a progress bar and the status line.
- Reasoning: the model's trace as it streams, each round's assessment and refinement.
- Versions: the armature's versions (a list: name, round, prompt, assessment;
  click to play, keep, rename, delete) and the selected version's details.
- Critique & Refine: the model's assessment of what the armature plays (a
  version or any animation), an editable instruction, Refine, Describe Motion.

draw() must never raise: it runs on every redraw, in every state (no armature,
no model set, backend down, a job running)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import bpy

from . import actions, retarget_ops, rig
from .jobs import PREVIEW_MARK, manager
from .prefs import ADDON_ID, get_settings
from .props import SATISFIED, runtime, scene_prompt

LEVEL_ICONS = {"IDLE": "INFO", "RUNNING": "SORTTIME", "DONE": "CHECKMARK", "ERROR": "ERROR",
               "CANCELLED": "CANCEL"}
WRAP = 48  # characters per label line in the sidebar
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "presets" / "prompts"
KIND_LABELS = {"generate": "Generate", "refine": "Refine", "critique": "Critique", "caption": "Describe", "batch": "Batch"}


def wrapped_labels(layout, text: str, *, icon: str = "NONE", width: int = WRAP, max_lines: int = 30) -> None:
    """Draw text as labels, wrapped, first line with the icon; long text keeps its end."""
    lines = [piece for para in text.splitlines() for piece in (textwrap.wrap(para, width) or [""])]
    if len(lines) > max_lines:
        lines = ["..."] + lines[-max_lines:]
    col = layout.column(align=True)
    for i, line in enumerate(lines):
        col.label(text=line, icon=icon if i == 0 else "NONE")


def one_line(text: str, width: int = 60) -> str:
    """The first line of text, shortened with an ellipsis."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= width else first[:width - 3] + "..."


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


def _target(context):
    """The target armature (None when nothing fits or the context has no view layer)."""
    if getattr(context, "view_layer", None) is None:
        return None
    return rig.find_target_armature(context)


def _active_action(armature):
    anim = armature.animation_data if armature is not None else None
    return anim.action if anim is not None else None


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


class IRG_PT_generate(bpy.types.Panel):
    """Prompt, Generate/Cancel, progress and the status line."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
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
        target = _target(context)
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


class IRG_PT_trace(bpy.types.Panel):
    """The model's analysis and each round's assessment and refinement, as they stream."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Reasoning"
    bl_parent_id = "IRG_PT_generate"
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


class IRG_UL_versions(bpy.types.UIList):
    """The target armature's versions, newest first: keep flag, name, round, prompt, assessment.

    Listed from bpy.data.actions; the active row is the Action the armature plays
    (Object.irg_version_index), so clicking a row plays that version."""

    bl_idname = "IRG_UL_versions"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        info = actions.version_info(item)
        row = layout.row(align=True)
        keep = bool(info.get("keep"))
        op = row.operator("irg.toggle_keep", text="", icon="LOCKED" if keep else "UNLOCKED", emboss=False)
        op.action = item.name
        split = row.split(factor=0.4, align=True)
        split.label(text=item.name, icon="ACTION")
        cols = split.split(factor=0.15, align=True)
        cols.label(text=f"R{info.get('round', '?')}")
        cols = cols.split(factor=0.5, align=True)
        cols.label(text=one_line(info.get("prompt", "")))
        cols.label(text=one_line(info.get("assessment", "")) or "-")
        retarget_ops.draw_apply_button(row, item)

    def filter_items(self, context, data, propname):
        items = getattr(data, propname)
        armature = _target(context)
        try:
            found = actions.versions(armature) if armature is not None else []
        except ValueError:  # e.g. the armature is in Edit Mode
            found = []
        order = {a.name: i for i, a in enumerate(reversed(found))}  # newest first
        pattern = self.filter_name.lower()
        flags, new_order = [], []
        for k, item in enumerate(items):
            shown = item.name in order and (not pattern or pattern in item.name.lower())
            flags.append(self.bitflag_filter_item if shown else 0)
            new_order.append(order.get(item.name, len(order) + k))
        # new_order must be a permutation: rank the keys.
        ranks = sorted(range(len(new_order)), key=new_order.__getitem__)
        positions = [0] * len(ranks)
        for position, k in enumerate(ranks):
            positions[k] = position
        return flags, positions


class IRG_PT_versions(bpy.types.Panel):
    """The target armature's versions; the selected one's details and actions."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Versions"
    bl_parent_id = "IRG_PT_generate"

    def draw(self, context):
        layout = self.layout
        armature = _target(context)
        if armature is None:
            layout.label(text="No armature selected.")
            return
        try:
            found = actions.versions(armature)
        except ValueError as exc:  # a redraw must not raise; show why instead
            layout.label(text=f"Cannot list versions: {exc}", icon="ERROR")
            return
        if not found:
            layout.label(text="No versions yet.")
            return
        layout.template_list("IRG_UL_versions", "", bpy.data, "actions", armature, "irg_version_index", rows=4)
        action = _active_action(armature)
        if action is None or action not in found:
            layout.label(text="The armature plays no version: click one to play it.", icon="INFO")
            return
        info = actions.version_info(action)
        row = layout.row(align=True)
        keep = bool(info.get("keep"))
        row.operator("irg.toggle_keep", text="Kept" if keep else "Keep", icon="LOCKED" if keep else "UNLOCKED",
                     depress=keep).action = action.name
        row.operator("irg.rename_version", text="Rename", icon="GREASEPENCIL").action = action.name
        sub = row.row(align=True)
        sub.enabled = not keep
        sub.operator("irg.delete_version", text="", icon="TRASH").action = action.name
        _draw_details(layout.box(), action, info)


def _draw_details(layout, action, info: dict) -> None:
    """What a version is: prompt, round, parent, how it was made, caption."""
    wrapped_labels(layout, f"Prompt: {info.get('prompt', '')}", icon="TEXT", max_lines=6)
    parent = info.get("parent") or ""
    made = {"generate": "generated", "refine": "refined", "apply": "applied", "retarget": "retargeted"}
    how = made.get(info.get("source", ""), info.get("source", "") or "made")
    line = f"Round {info.get('round', '?')}, {how}"
    if parent:
        line += f" from {parent}" + ("" if bpy.data.actions.get(parent) is not None else " (deleted)")
    layout.label(text=line, icon="FILE_PARENT" if parent else "BLANK1")
    extra = info.get("extra") or {}
    if extra.get("instruction"):
        wrapped_labels(layout, f"Instruction: {extra['instruction']}", max_lines=4)
    if info.get("caption"):
        wrapped_labels(layout, f"Caption: {info['caption']}", icon="INFO", max_lines=6)


class IRG_PT_review(bpy.types.Panel):
    """Critique & refine what the armature plays (a version, or any animation); describe it."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Critique & Refine"
    bl_parent_id = "IRG_PT_generate"

    def draw(self, context):
        layout = self.layout
        rt = runtime(context)
        armature = _target(context)
        action = _active_action(armature)
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


class IRG_PT_retarget(bpy.types.Panel):
    """Retarget options and the armature's bone mapping."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "IRG Motion"
    bl_label = "Retarget"
    bl_parent_id = "IRG_PT_generate"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        retarget_ops.draw_retarget(self.layout, context)  # preset, root mode, foot locking, smoothing
        retarget_ops.draw_mapping(self.layout, context)  # the collapsible "Bone Mapping" box


CLASSES = (IRG_MT_prompt_presets, IRG_UL_versions, IRG_PT_generate, IRG_PT_trace, IRG_PT_versions, IRG_PT_review,
           IRG_PT_retarget)
