"""Operators: Generate, Cancel, and make a version the active Action."""
from __future__ import annotations

import bpy
from bpy.props import StringProperty

from . import actions, client, rig
from .client import BackendError
from .jobs import GenerateJob, manager
from .prefs import get_settings


def start_generation(context, prompt: str, armature=None, **overrides) -> GenerateJob:
    """Validate everything, then start a GenerateJob (the shared path of the operator and api).

    Raises ValueError (empty prompt, bad setting), BackendError (backend or model
    missing) or RuntimeError (a job already runs) before anything is spawned or written.
    armature None: the target armature, else a default rig made when the first motion arrives."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("The prompt is empty: describe the motion to generate, "
                         "e.g. 'a person walks forward and waves'.")
    if manager.busy():
        raise RuntimeError("A generation is already running: wait for it or press Cancel.")
    settings = get_settings(**overrides)
    backend = client.get_client(settings.backend_python, settings.model_dir, settings.device, settings.precision)
    if armature is None:
        armature = rig.find_target_armature(context)
    job = GenerateJob(backend, armature.name if armature is not None else None, prompt, settings)
    manager.start(job, timer=not bpy.app.background)
    return job


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
        prompt = self.prompt or context.scene.irg_motion.prompt
        try:
            job = start_generation(context, prompt)
        except (ValueError, RuntimeError, BackendError) as exc:
            self.report({"ERROR"}, str(exc))
            rt = context.window_manager.irg_motion
            rt.status, rt.level, rt.running = str(exc), "ERROR", False
            return {"CANCELLED"}
        if job.armature_name is None:
            self.report({"INFO"}, "No armature selected: a default rig is created when the motion arrives.")
        return {"FINISHED"}


class IRG_OT_cancel(bpy.types.Operator):
    """Stop the running generation (versions already written are kept)"""

    bl_idname = "irg.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return manager.busy()

    def execute(self, context):
        manager.cancel()
        return {"FINISHED"}


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
        return {"FINISHED"}


CLASSES = (IRG_OT_generate, IRG_OT_cancel, IRG_OT_set_active_version)
