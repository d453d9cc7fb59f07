"""Batch bake in Blender: the list on the scene, its UIList, operators and sub-panel.

The list (`scene.irg_batch`) is saved in the .blend with every item's status, error,
baked Action and strip name, so a save in the middle of a batch loses nothing; items
a saved file shows as running were interrupted and are pending again after loading.
The work itself is jobs.batch.BatchJob, run by jobs.base.manager (one job at a time).

Registered after ui.generate (the panel is a child of IRG_PT_generate): see FEATURES in
irg_blender_addon/__init__.py.
"""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..jobs import batch
from ..jobs.base import manager
from ..registration import register_classes, unregister_classes
from .widgets import REFUSALS, SubPanel, refuse, wrapped_labels

STATUS_ITEMS = (("PENDING", "Pending", "Not baked yet"), ("RUNNING", "Running", "Being baked"),
                ("DONE", "Done", "Baked: its Action is a strip on the track"),
                ("FAILED", "Failed", "Skipped: see its error; Retry Failed bakes it again"),
                ("CANCELLED", "Cancelled", "Stopped by Cancel"))
STATUS_ICONS = {"PENDING": "LAYER_USED", "RUNNING": "SORTTIME", "DONE": "CHECKMARK", "FAILED": "ERROR",
                "CANCELLED": "CANCEL"}


def _is_armature(self, obj) -> bool:
    return obj.type == "ARMATURE"


class IRG_PG_batch_item(bpy.types.PropertyGroup):
    """One prompt of the batch, and how its bake went."""

    uid: StringProperty(name="Id", options={"HIDDEN"})
    prompt: StringProperty(name="Prompt", description="What the motion should show")
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1: the generation default")
    length: FloatProperty(name="Length", default=0.0, min=0.0, soft_max=10.0, precision=1,
                          description="The longest the motion may be, in seconds (0.4 to 10; 0: the generation "
                                      "default)")
    status: EnumProperty(name="Status", items=STATUS_ITEMS, default="PENDING")
    error: StringProperty(name="Error", description="Why the bake of this prompt failed")
    action: PointerProperty(name="Action", type=bpy.types.Action, description="The version baked for this prompt")
    strip: StringProperty(name="Strip", description="Its strip on the batch track")


class IRG_PG_batch(bpy.types.PropertyGroup):
    """The batch list and where its strips go (saved with the scene)."""

    items: CollectionProperty(type=IRG_PG_batch_item)
    active_index: IntProperty(name="Active Item", default=0)
    armature: PointerProperty(name="Armature", type=bpy.types.Object, poll=_is_armature,
                              description="Where the strips go. Empty: the selected armature, else a default rig")
    track: StringProperty(name="Track", default=batch.DEFAULT_TRACK, description="The NLA track of the strips")
    frame_start: IntProperty(name="Start", default=1, description="Frame of the first strip")
    gap: IntProperty(name="Gap", default=10, min=0, soft_max=100, description="Frames between strips")
    blend_in: FloatProperty(name="Blend In", default=0.0, min=0.0, soft_max=50.0,
                            description="Frames over which each strip fades in")
    blend_out: FloatProperty(name="Blend Out", default=0.0, min=0.0, soft_max=50.0,
                             description="Frames over which each strip fades out")
    text: PointerProperty(name="Text", type=bpy.types.Text,
                          description="A text to load prompts from (one a line, or CSV when its name ends in .csv)")
    contact_sheet: StringProperty(name="Contact Sheet", subtype="FILE_PATH",
                                  description="The last batch's contact sheet: a row per prompt (PNG)")


def _batch(context):
    return getattr(context.scene, "irg_batch", None)


def _has_prompts(context) -> bool:
    group = _batch(context)
    return group is not None and len(group.items) > 0


class IRG_UL_batch_items(bpy.types.UIList):
    """The batch list: status, prompt, seed and length."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text="", icon=STATUS_ICONS.get(item.status, "QUESTION"))
        row.prop(item, "prompt", text="", emboss=False)
        if item.seed >= 0:
            row.label(text=f"seed {item.seed}")
        if item.length > 0:
            row.label(text=f"{item.length:g} s")


class IRG_OT_batch_add(bpy.types.Operator):
    """Add a prompt to the batch (the Generate prompt, when one is typed)"""

    bl_idname = "irg.batch_add"
    bl_label = "Add Prompt"
    bl_options = {"REGISTER", "UNDO"}

    prompt: StringProperty(name="Prompt", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return _batch(context) is not None and not batch.running()

    def execute(self, context):
        group = _batch(context)
        scene_props = getattr(context.scene, "irg_motion", None)
        text = self.prompt or (scene_props.prompt if scene_props is not None else "")
        batch.fill_items(group, [batch.BatchPrompt(text.strip())], replace=False)
        group.active_index = len(group.items) - 1
        return {"FINISHED"}


class IRG_OT_batch_remove(bpy.types.Operator):
    """Remove the selected prompt from the batch (its baked Action stays)"""

    bl_idname = "irg.batch_remove"
    bl_label = "Remove Prompt"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _has_prompts(context) and not batch.running()

    def execute(self, context):
        group = _batch(context)
        index = group.active_index
        if not 0 <= index < len(group.items):
            return refuse(self, "No prompt selected.")
        group.items.remove(index)
        group.active_index = min(index, len(group.items) - 1) if len(group.items) else 0
        return {"FINISHED"}


class IRG_OT_batch_clear(bpy.types.Operator):
    """Remove every prompt from the batch (baked Actions and strips stay)"""

    bl_idname = "irg.batch_clear"
    bl_label = "Clear Batch"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _has_prompts(context) and not batch.running()

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        group = _batch(context)
        group.items.clear()
        group.active_index = 0
        return {"FINISHED"}


class IRG_OT_batch_load_text(bpy.types.Operator):
    """Load prompts from a text (one a line: prompt | seed | length; CSV when its name ends in .csv)"""

    bl_idname = "irg.batch_load_text"
    bl_label = "Load Prompts from Text"
    bl_options = {"REGISTER", "UNDO"}

    text: StringProperty(name="Text", description="The text's name (empty: the batch's text)", options={"SKIP_SAVE"})
    replace: BoolProperty(name="Replace", default=True, description="Replace the list (else append to it)")

    @classmethod
    def poll(cls, context):
        return _batch(context) is not None and not batch.running()

    def execute(self, context):
        group = _batch(context)
        source = bpy.data.texts.get(self.text) if self.text else group.text
        if source is None:
            return refuse(self, f"No text named {self.text!r}." if self.text else
                           "Choose a text to load the prompts from (or load a .txt/.csv file).")
        try:
            entries = batch.prompts_from_text(source)
        except ValueError as exc:
            return refuse(self, exc)
        batch.fill_items(group, entries, replace=self.replace)
        self.report({"INFO"}, f"Loaded {len(entries)} prompt(s) from {source.name!r}.")
        return {"FINISHED"}


class IRG_OT_batch_load_file(bpy.types.Operator):
    """Load prompts from a .txt (prompt | seed | length a line) or .csv (prompt,seed,length) file"""

    bl_idname = "irg.batch_load_file"
    bl_label = "Load Prompts from File"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.txt;*.csv", options={"HIDDEN"})
    replace: BoolProperty(name="Replace", default=True, description="Replace the list (else append to it)")

    @classmethod
    def poll(cls, context):
        return _batch(context) is not None and not batch.running()

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.filepath:
            return refuse(self, "Choose a .txt or .csv file of prompts.")
        try:
            entries = batch.read_prompt_file(bpy.path.abspath(self.filepath))
        except ValueError as exc:
            return refuse(self, exc)
        batch.fill_items(_batch(context), entries, replace=self.replace)
        self.report({"INFO"}, f"Loaded {len(entries)} prompt(s).")
        return {"FINISHED"}


def _start(op, context, scope: str) -> set[str]:
    try:
        job = batch.start_batch(context, scope)
    except REFUSALS as exc:
        return refuse(op, exc, context)
    if job.armature_name is None and job.running:
        op.report({"INFO"}, "No armature selected: a default rig is created when the first motion arrives.")
    return {"FINISHED"}


class IRG_OT_batch_bake(bpy.types.Operator):
    """Bake the prompts one after another into NLA strips on the batch track"""

    bl_idname = "irg.batch_bake"
    bl_label = "Bake Batch"
    bl_options = {"REGISTER"}

    scope: EnumProperty(name="Bake", items=(("ALL", "All", "Every prompt (new versions for those already baked)"),
                                            ("UNFINISHED", "Unfinished", "Every prompt not baked yet")),
                        default="ALL", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return _has_prompts(context) and not manager.busy()

    def execute(self, context):
        return _start(self, context, self.scope)


class IRG_OT_batch_retry_failed(bpy.types.Operator):
    """Bake again only the prompts that failed"""

    bl_idname = "irg.batch_retry_failed"
    bl_label = "Retry Failed"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        group = _batch(context)
        return group is not None and any(it.status == "FAILED" for it in group.items) and not manager.busy()

    def execute(self, context):
        return _start(self, context, "FAILED")


class IRG_OT_batch_cancel(bpy.types.Operator):
    """Stop the batch after the current prompt (press again to stop at once); the rest stay pending"""

    bl_idname = "irg.batch_cancel"
    bl_label = "Cancel Batch"

    @classmethod
    def poll(cls, context):
        return batch.running()

    def execute(self, context):
        batch.current_job().cancel()
        return {"FINISHED"}


class IRG_PT_batch(SubPanel, bpy.types.Panel):
    """The batch list, where its strips go, Bake / Cancel / Retry Failed and what failed."""

    bl_label = "Batch Bake"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        group = _batch(context)
        if group is None:
            layout.label(text="IRG Motion is not registered.", icon="ERROR")
            return
        row = layout.row()
        row.template_list("IRG_UL_batch_items", "", group, "items", group, "active_index", rows=4)
        col = row.column(align=True)
        col.operator("irg.batch_add", text="", icon="ADD")
        col.operator("irg.batch_remove", text="", icon="REMOVE")
        col.separator()
        col.operator("irg.batch_clear", text="", icon="TRASH")
        row = layout.row(align=True)
        row.prop(group, "text", text="")
        row.operator("irg.batch_load_text", text="Load", icon="TEXT")
        row.operator("irg.batch_load_file", text="", icon="FILEBROWSER")
        _draw_active(layout, group)
        _draw_layout(layout, group)
        _draw_run(layout, group)
        if group.contact_sheet:
            row = layout.row(align=True)
            row.label(text=f"Contact sheet: {bpy.path.basename(group.contact_sheet)}", icon="IMAGE_DATA")
            row.operator("wm.path_open", text="Open", icon="FILE_IMAGE").filepath = group.contact_sheet


def _draw_active(layout, group) -> None:
    if not 0 <= group.active_index < len(group.items):
        return
    item = group.items[group.active_index]
    box = layout.box()
    box.prop(item, "prompt", text="")
    row = box.row()
    row.prop(item, "seed")
    row.prop(item, "length")
    if item.status == "DONE" and item.action is not None:
        box.label(text=f"{item.action.name} (strip {item.strip or '?'})", icon="ACTION")
    if item.error:
        wrapped_labels(box, item.error, icon="ERROR", max_lines=12)


def _draw_layout(layout, group) -> None:
    col = layout.column(align=True)
    col.prop(group, "armature")
    col.prop(group, "track", icon="NLA")
    row = col.row(align=True)
    row.prop(group, "frame_start")
    row.prop(group, "gap")
    row = col.row(align=True)
    row.prop(group, "blend_in")
    row.prop(group, "blend_out")


def _draw_run(layout, group) -> None:
    job = batch.current_job()
    if job is not None and job.running:
        box = layout.box()
        box.progress(factor=float(job.progress), type="BAR", text=f"{job.position} of {job.total}")
        wrapped_labels(box, job.status, icon="SORTTIME", max_lines=6)
        box.operator("irg.batch_cancel", text="Cancel", icon="CANCEL")
        return
    counts = {status: 0 for status, _, _ in STATUS_ITEMS}
    for item in group.items:
        counts[item.status] += 1
    row = layout.row(align=True)
    row.scale_y = 1.3
    row.operator("irg.batch_bake", text="Bake All", icon="NLA").scope = "ALL"
    unfinished = len(group.items) - counts["DONE"]
    if counts["DONE"] and unfinished:
        row.operator("irg.batch_bake", text=f"Bake Unfinished ({unfinished})", icon="PLAY").scope = "UNFINISHED"
    if counts["FAILED"]:
        row.operator("irg.batch_retry_failed", text=f"Retry Failed ({counts['FAILED']})", icon="FILE_REFRESH")
    if job is not None and job.summary:
        wrapped_labels(layout, job.summary, icon="ERROR" if job.state == "error" else "INFO", max_lines=8)
    failed = [(i, it) for i, it in enumerate(group.items, 1) if it.status == "FAILED"]
    if failed:
        box = layout.box()
        box.label(text=f"Failed ({len(failed)})", icon="ERROR")
        for number, item in failed:
            first = item.error.splitlines()[0] if item.error else "no message"
            wrapped_labels(box, f"{number}. {item.prompt or '(empty prompt)'}: {first}", max_lines=4)


@bpy.app.handlers.persistent
def _after_load(_dummy=None) -> None:
    """Items saved while they were being baked were interrupted: pending again."""
    for scene in bpy.data.scenes:
        group = getattr(scene, "irg_batch", None)
        for item in group.items if group is not None else ():
            if item.status == "RUNNING":
                item.status, item.error = "PENDING", "Interrupted (saved during the bake): Bake Unfinished bakes it."


@bpy.app.handlers.persistent
def _before_load(_dummy=None) -> None:
    """A job running when another file opens (a batch, a generate, a critique) stops without
    touching the new file."""
    manager.abandon()  # the one running job, a batch included


CLASSES = (IRG_PG_batch_item, IRG_PG_batch, IRG_UL_batch_items, IRG_OT_batch_add, IRG_OT_batch_remove,
           IRG_OT_batch_clear, IRG_OT_batch_load_text, IRG_OT_batch_load_file, IRG_OT_batch_bake,
           IRG_OT_batch_retry_failed, IRG_OT_batch_cancel, IRG_PT_batch)
_HANDLERS = ((bpy.app.handlers.load_post, _after_load), (bpy.app.handlers.load_pre, _before_load))


def register() -> None:
    """Register the classes (after ui.generate: the panel is a child of IRG_PT_generate), attach the list
    to the Scene, install the load handlers."""
    register_classes(CLASSES)
    bpy.types.Scene.irg_batch = PointerProperty(type=IRG_PG_batch)
    for handlers, func in _HANDLERS:
        if func not in handlers:
            handlers.append(func)


def unregister() -> None:
    """Undo register() (before ui.generate is unregistered)."""
    for handlers, func in _HANDLERS:
        if func in handlers:
            handlers.remove(func)
    if hasattr(bpy.types.Scene, "irg_batch"):
        del bpy.types.Scene.irg_batch
    unregister_classes(CLASSES)
