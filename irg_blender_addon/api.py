"""Scripting API for Blender scripts (also headless: `blender -b -P script.py`).

    from irg_blender_addon import api      # as an extension: from bl_ext.<repo>.irg_motion.irg_blender_addon import api
    versions = api.generate("a person jumps twice", model_dir="/models/irg", backend_python="/envs/irg/bin/python")
    review = api.critique(versions[-1])           # {"assessment", "refinement", "satisfied"}
    better = api.refine(versions[-1], "jump higher")  # [the new version], its parent recorded
    words = api.caption(better[0])
    api.refine(bpy.data.actions["hand_keyed_walk"], armature="Armature", prompt="a person walks")
    api.apply_motion("Armature", joints_hml3d, preset="mixamo", foot_lock=True)  # (T, 22, 3) metres, Y up, facing +Z
    api.bake_batch("Armature", ["a person walks", "a person waves"], track="IRG Batch", gap=10)
    longer = api.extend(versions[-1], "then he sits down", seconds=3)  # [the new version]: the source, then more
    api.compare("Armature", versions[0])          # a ghost plays it beside the armature; compare(..., None) removes it
    api.make_thumbnails(api.versions("Armature"))  # {version name: strip PNG}, rendered in a background Blender

apply_motion also takes the retarget options: preset ("auto", a preset id or a
{joint: bone} map), root_mode ("root_motion", "in_place", "root_bone"),
foot_lock, smoothing and ik_legs (booleans; ik_legs keys a control rig's IK feet,
planted during foot contacts, and knee poles, e.g. on a generated Rigify rig).

Every call blocks until the backend answers (timeout= seconds) and takes the same
keyword overrides as generate (model_dir, backend_python, device, precision, mode,
rounds, max_motion_tokens, max_trace_tokens, temperature, top_p, seed).

Settings not given here come from the add-on preferences, then from the
environment (IRG_BACKEND_PYTHON, IRG_MODEL_DIR).
"""
from __future__ import annotations

import bpy
import numpy as np

from .anim import actions
from .core import skeleton
from .jobs.base import BackendJob, manager
from .anim import ghost
from .jobs import thumbnails
from .jobs.batch import bake_batch  # noqa: F401  (public: api.bake_batch)
from .jobs.extend import DEFAULT_SECONDS, start_extend
from .jobs.generate import start_generation
from .jobs.review import resolve_action, start_caption, start_critique, start_refine
from .jobs.run import OPTION_NAMES, GenerationError, option_overrides, pump_until_done, resolve_armature  # noqa: F401

def _wait(job: BackendJob, timeout: float, what: str) -> BackendJob:
    """Pump the job until it ends; GenerationError / TimeoutError."""
    if not pump_until_done(job, timeout):
        raise TimeoutError(f"{what} did not finish within {timeout:.0f} s; kept {len(job.action_names)} "
                           "version(s). Raise timeout= for the real model on CPU.")
    if job.state == "error":
        raise GenerationError(job.error)
    if job.state == "cancelled":
        raise GenerationError(f"{what} was cancelled: {job.status}")
    return job


def _made(job: BackendJob) -> list[bpy.types.Action]:
    return [bpy.data.actions[name] for name in job.action_names if name in bpy.data.actions]


def generate(prompt: str, armature=None, *, timeout: float = 600.0, **options) -> list[bpy.types.Action]:
    """Generate motion for a prompt and key it on the armature; blocks until done.

    Returns the new versions (one Action per completed round). options: model_dir,
    backend_python, device, precision, mode ('interleaved'|'direct'), rounds,
    max_motion_tokens, max_trace_tokens, temperature, top_p, seed. armature: an Object, a name, or None
    (the target armature, else a default rig created when the first motion arrives).
    Raises ValueError (bad input), BackendError (backend or model missing),
    GenerationError (the backend failed or gave no motion) or TimeoutError."""
    overrides = option_overrides(options)
    target = resolve_armature(armature, create=False)
    job = start_generation(bpy.context, prompt, target, **overrides)
    return _made(_wait(job, timeout, "generation"))


def critique(version, *, armature=None, prompt: str | None = None, timeout: float = 600.0,
             **options) -> dict:
    """The model's assessment of a version (or any Action) and its proposed refinement instruction.

    Returns {"assessment": str, "refinement": str, "satisfied": bool}; a version also
    keeps them in its metadata. version: an Action or its name. An Action that is not
    a version (hand-keyed, imported) is sampled on `armature` (an Object, a name, or
    None: the target armature) and needs `prompt` (what the motion should show).
    options as for generate. Raises ValueError, BackendError, GenerationError, TimeoutError."""
    overrides = option_overrides(options)
    target = resolve_armature(armature, create=False)
    job = _wait(start_critique(bpy.context, version, armature=target, prompt=prompt, **overrides),
                timeout, "critique")
    return dict(job.result)


def refine(version, instruction: str | None = None, *, armature=None, prompt: str | None = None,
           timeout: float = 600.0, **options) -> list[bpy.types.Action]:
    """Refine a version (or any Action) into a new version; returns [it] ([] when the model,
    asked to decide itself, finds nothing to refine).

    instruction None: the model assesses the motion and writes its own instruction. The new
    version's metadata records parent (the given Action's name), source "refine", round
    (the parent's + 1) and extra["instruction"]. armature / prompt as for critique (the
    new version goes on the version's own armature when it still exists). options as for generate."""
    overrides = option_overrides(options)
    target = resolve_armature(armature, create=False)
    job = start_refine(bpy.context, version, instruction, armature=target, prompt=prompt, **overrides)
    return _made(_wait(job, timeout, "refinement"))


def caption(version, *, armature=None, timeout: float = 600.0, **options) -> str:
    """The model's description of a version (or any Action, sampled on `armature`); a version
    also keeps it in its metadata ("caption"). options as for generate."""
    overrides = option_overrides(options)
    target = resolve_armature(armature, create=False)
    job = _wait(start_caption(bpy.context, version, armature=target, **overrides), timeout, "caption")
    return job.caption or ""


def extend(version, prompt: str | None = None, *, seconds: float = DEFAULT_SECONDS, armature=None,
           timeout: float = 600.0, **options) -> list[bpy.types.Action]:
    """Continue a version (or any Action, sampled on `armature`) with `seconds` of new motion.

    The last 2 s are encoded and forced as the start of the model's next motion, which
    carries on from there; each new version holds the source, then the new motion (one per
    round in interleaved mode). Its metadata records parent (the source's name), source
    "extend" and extra["extend_frame"] (the scene frame where the new motion starts).
    prompt: what happens next (default: the source's own prompt). options as for generate."""
    overrides = option_overrides(options)
    target = resolve_armature(armature, create=False)
    job = start_extend(bpy.context, version, prompt, seconds=seconds, armature=target, **overrides)
    return _made(_wait(job, timeout, "extension"))


def compare(armature, version=None, *, offset: float = ghost.DEFAULT_OFFSET) -> bpy.types.Object | None:
    """Play `version` on a ghost copy of the armature, `offset` metres to its side; None removes the ghost
    (and returns None). Removing it leaves no object, Action or driver behind."""
    target = resolve_armature(armature, create=False)
    if target is None:
        raise ValueError("no armature to compare on: pass one")
    if version is None:
        ghost.hide(target)
        return None
    return ghost.show(target, resolve_action(version), offset)


def make_thumbnails(versions, *, force: bool = False, timeout: float = 300.0) -> dict[str, str]:
    """Render the versions' thumbnail strips now (a background Blender renders; blocks until done).

    Returns {version name: PNG path} for the strips that exist afterwards (cached ones are
    not rendered again unless force). Raises TimeoutError, or RuntimeError naming the
    versions that could not be rendered and why."""
    names = [resolve_action(v).name for v in versions]
    job = thumbnails.ThumbnailJob(names, force=force)
    if not pump_until_done(job, timeout):
        raise TimeoutError(f"the thumbnails were not made within {timeout:.0f} s")
    if job.errors:
        raise RuntimeError("could not render: " + "; ".join(f"{k}: {v}" for k, v in job.errors.items()))
    return {n: str(thumbnails.thumb_path(bpy.data.actions[n])) for n in names
            if thumbnails.has_thumbnail(bpy.data.actions[n])}


def apply_motion(armature, joints, fps: float = 20.0, *, prompt: str = "applied motion", **options) -> bpy.types.Action:
    """Key joint positions (T, 22, 3; HumanML3D axes: metres, Y up, facing +Z) as a new version.

    options go to actions.write_version (round, tokens, assessment, refinement, model, seed, parent, extra)."""
    points = np.asarray(joints, dtype=np.float32)
    if points.ndim != 3 or points.shape[1:] != (22, 3) or points.shape[0] < 1:
        raise ValueError(f"joints must have shape (T, 22, 3), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("joints contain NaN or infinite values")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if manager.busy():
        raise RuntimeError("A generation is running: wait for it or cancel it first.")
    target = resolve_armature(armature, create=True)
    return actions.write_version(target, skeleton.to_blender(points), fps=float(fps), prompt=prompt,
                                 source="apply", **options)


def versions(armature=None) -> list[bpy.types.Action]:
    """The armature's versions, oldest first ([] when there is no armature)."""
    target = resolve_armature(armature, create=False)
    return actions.versions(target) if target is not None else []
