"""Operators: Generate, Cancel (also Esc in the 3D View), the versions list's actions
(use, keep, rename, delete), Critique, Refine and Describe motion.

Every operator that changes the scene has the UNDO option (one undo step each);
what a job writes later from the UI timer pushes its own step (jobs._tick). The
start_* functions are the shared path of the operators and the scripting api:
they validate everything before anything is spawned or written.
"""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from . import actions, client, props, rig
from .client import BackendError
from .jobs import PREVIEW_MARK, CaptionJob, CritiqueJob, GenerateJob, RefineJob, manager, motion_source, set_meta
from .prefs import get_settings

REFUSALS = (ValueError, RuntimeError, BackendError)  # what the start_* functions raise for bad input or state


def _check_idle() -> None:
    if manager.busy():
        raise RuntimeError("IRG Motion is busy with another request: wait for it or press Cancel (Esc).")


def _backend(settings):
    return client.client_for(settings)  # the remote server when a URL is set, else the local process


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
    _check_idle()
    settings = get_settings(**overrides)
    backend = _backend(settings)
    if armature is None:
        armature = rig.find_target_armature(context)
    job = GenerateJob(backend, armature.name if armature is not None else None, prompt, settings, preview=preview)
    manager.start(job)
    return job


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
    _check_idle()
    action = resolve_action(action)
    if action.get(PREVIEW_MARK):
        raise ValueError("This is the live preview, not a version: wait for the generation to finish.")
    info = actions.version_info(action)
    armature = version_armature(action, armature or rig.find_target_armature(context))
    prompt = (prompt or info.get("prompt") or "").strip()
    if need_prompt and not prompt:
        raise ValueError(f"{action.name!r} is not a generated version, so it has no prompt: type in the prompt "
                         "what the motion should show, then try again.")
    settings = get_settings(**overrides)
    backend = _backend(settings)
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
                    parent_round=parent_round, preview=preview)
    manager.start(job)
    return job


def start_caption(context, action, *, armature=None, **overrides) -> CaptionJob:
    """Ask the model to describe an Action in words."""
    action, _armature, _prompt, motion, settings, backend = _review_inputs(context, action, armature, "", overrides,
                                                                           need_prompt=False)
    job = CaptionJob(backend, action.name, motion, settings)
    manager.start(job)
    return job


def refuse(operator, context, exc: Exception) -> set[str]:
    """Report a refusal once (operator report + status line); the operator changes nothing."""
    operator.report({"ERROR"}, str(exc))
    rt = props.runtime(context)
    if rt is not None:
        rt.status, rt.level, rt.running = str(exc), "ERROR", False
    return {"CANCELLED"}


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
        prompt = self.prompt or props.scene_prompt(context.scene)
        scene_props = getattr(context.scene, "irg_motion", None)
        try:
            job = start_generation(context, prompt, preview=bool(scene_props and scene_props.preview))
        except REFUSALS as exc:
            return refuse(self, context, exc)
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


class _ActionOperator:
    """An operator on one Action, named by its `action` property."""

    action: StringProperty(name="Action", options={"SKIP_SAVE"})

    def _action(self) -> bpy.types.Action:
        return resolve_action(self.action)


class IRG_OT_set_active_version(bpy.types.Operator):
    """Make this version the armature's active Action"""

    bl_idname = "irg.set_active_version"
    bl_label = "Use Version"
    bl_options = {"REGISTER", "UNDO"}

    armature: StringProperty(name="Armature")
    action: StringProperty(name="Action")

    def execute(self, context):
        armature = bpy.data.objects.get(self.armature)
        action = bpy.data.actions.get(self.action)
        if armature is None or armature.type != "ARMATURE" or action is None:
            self.report({"ERROR"}, f"No armature {self.armature!r} or version {self.action!r}: "
                                   "it was renamed or deleted.")
            return {"CANCELLED"}
        actions.set_active_version(armature, action)
        props.review(action)
        return {"FINISHED"}


class IRG_OT_toggle_keep(_ActionOperator, bpy.types.Operator):
    """Keep this version: a kept version cannot be deleted"""

    bl_idname = "irg.toggle_keep"
    bl_label = "Keep Version"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            action = self._action()
            set_meta(action, keep=not actions.version_info(action).get("keep", False))
        except ValueError as exc:
            return refuse(self, context, exc)
        return {"FINISHED"}


class IRG_OT_rename_version(_ActionOperator, bpy.types.Operator):
    """Rename this version; its metadata and its children's parent links follow"""

    bl_idname = "irg.rename_version"
    bl_label = "Rename Version"
    bl_options = {"REGISTER", "UNDO"}

    name: StringProperty(name="Name", options={"SKIP_SAVE"})

    def invoke(self, context, event):
        action = bpy.data.actions.get(self.action)
        if action is not None and not self.name:
            self.name = action.name
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        try:
            action = self._action()
            rename_version(action, self.name)
        except ValueError as exc:
            return refuse(self, context, exc)
        return {"FINISHED"}


def rename_version(action: bpy.types.Action, name: str) -> None:
    """Rename a version (ValueError for an empty or taken name); children keep pointing at it."""
    name = (name or "").strip()
    if not name:
        raise ValueError("The new name is empty: type a name for the version.")
    if name == action.name:
        return
    if bpy.data.actions.get(name) is not None:
        raise ValueError(f"An Action named {name!r} already exists: pick another name.")
    old = action.name
    action.name = name
    for other in bpy.data.actions:
        if actions.version_info(other).get("parent") == old:
            actions.update_info(other, parent=action.name)
    rt = props.runtime()
    if rt is not None and rt.review_action == old:
        rt.review_action = action.name


class IRG_OT_delete_version(_ActionOperator, bpy.types.Operator):
    """Delete this version (asks first; kept versions are never deleted)"""

    bl_idname = "irg.delete_version"
    bl_label = "Delete Version"
    bl_options = {"REGISTER", "UNDO"}

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        try:
            action = self._action()
            info = actions.version_info(action)
            if not info:
                raise ValueError(f"{action.name!r} is not an IRG Motion version: delete it in the Action editor.")
            if info.get("keep"):
                raise ValueError(f"{action.name!r} is marked Keep: clear its Keep flag first to delete it.")
        except ValueError as exc:
            return refuse(self, context, exc)
        name = action.name
        actions.delete_version(action)
        self.report({"INFO"}, f"Deleted {name}.")
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


class _ReviewOperator(_ActionOperator):
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
            return refuse(self, context, ValueError("Nothing to work on: select an armature that plays a version "
                                                     "or an animation."))
        try:
            if start is not start_caption and not actions.version_info(resolve_action(action)):
                kwargs["prompt"] = props.scene_prompt(context.scene)
            start(context, action, armature=armature, **kwargs)
        except REFUSALS as exc:
            return refuse(self, context, exc)
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


CLASSES = (IRG_OT_generate, IRG_OT_cancel, IRG_OT_set_active_version, IRG_OT_toggle_keep, IRG_OT_rename_version,
           IRG_OT_delete_version, IRG_OT_use_prompt, IRG_OT_critique, IRG_OT_refine, IRG_OT_caption)

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
