"""Generate against the real backend subprocess and the tiny fixture model: the operator,
the job's pump(), versions and their metadata, frame counts, backend reuse, the api."""
from __future__ import annotations

import json
import signal

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions
from irg_blender_addon import api
from irg_blender_addon.backend import registry
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.core import skeleton


@pytest.fixture()
def generate(pump):
    """Type the prompt in the panel, press Generate, pump until the job ends."""
    def run(prompt: str) -> generate_jobs.GenerateJob:
        bpy.context.scene.irg_motion.prompt = prompt
        assert bpy.ops.irg.generate() == {"FINISHED"}
        job = jobs.manager.job
        assert job is not None and job.running
        return pump(job)
    return run


def frames(action) -> float:
    start, end = action.frame_range
    return end - start + 1


def test_operator_writes_versions_with_metadata_and_reuses_the_backend(scene, addon_prefs, fixture_model, generate,
                                                                       counts):
    scene.render.fps, scene.render.fps_base = 20, 1.0
    before = counts()
    job = generate("  a person walks forward  ")
    assert job.state == "done", job.status
    assert job.error == "" and job.status.startswith("Done in")
    assert len(job.action_names) == 1  # direct mode: one motion
    arm = bpy.data.objects[job.armature_name]
    assert arm.type == "ARMATURE"  # the default rig, made when the motion arrived
    assert counts() == {"objects": before["objects"] + 1, "armatures": before["armatures"] + 1,
                        "actions": before["actions"] + 1}
    action = bpy.data.actions[job.action_names[0]]
    assert action.name == f"{actions.slugify('a person walks forward')}.v001"
    assert arm.animation_data.action == action
    info = actions.version_info(action)
    manifest = json.loads((fixture_model / "manifest.json").read_text())
    assert info["prompt"] == "a person walks forward"  # stripped
    assert info["round"] == 1 and info["model"] == manifest["name"] and info["source"] == "generate"
    assert info["seed"] is None and info["parent"] == "" and info["extra"]["mode"] == "direct"
    tokens = list(info["tokens"])
    assert 1 <= len(tokens) <= addon_prefs.max_motion_tokens and all(0 <= t < 512 for t in tokens)
    assert frames(action) == skeleton.FRAMES_PER_TOKEN * len(tokens)  # 4 frames per token at 20 fps
    rt = bpy.context.window_manager.irg_motion
    assert rt.level == "DONE" and not rt.running and rt.status == job.status

    backend = job.client
    pid = backend.pid
    assert isinstance(pid, int) and backend.state == "ready"
    job2 = generate("a person walks forward")
    assert job2.state == "done", job2.status
    assert job2.client is backend and backend.pid == pid  # the loaded backend was reused
    assert job2.armature_name == arm.name  # the existing rig is the target now
    second = bpy.data.actions[job2.action_names[0]]
    assert second.name == f"{actions.slugify('a person walks forward')}.v002"
    assert [a.name for a in actions.versions(arm)] == [action.name, second.name]
    assert arm.animation_data.action == second
    assert list(actions.version_info(second)["tokens"]) == tokens  # greedy: same prompt, same motion


def test_scene_fps_24_keeps_the_duration(scene, addon_prefs, generate):
    scene.render.fps, scene.render.fps_base = 24, 1.0
    job = generate("a person jumps")
    assert job.state == "done", job.status
    action = bpy.data.actions[job.action_names[0]]
    info = actions.version_info(action)
    assert (info["src_fps"], info["fps"]) == (20.0, 24.0)
    n_tokens = len(info["tokens"])
    source_seconds = (skeleton.FRAMES_PER_TOKEN * n_tokens - 1) / 20.0
    start, end = action.frame_range
    assert abs((end - start) / 24.0 - source_seconds) <= 1 / 24.0 + 1e-6


def test_interleaved_trace_without_a_motion_still_gives_one_version(scene, addon_prefs, generate):
    # The fixture's random weights never open <Motion> in a short trace (113 prompt tokens + 47):
    # the backend falls back to the direct prompt and says so; the status passes that on.
    addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 160
    job = generate("a person waves")
    assert job.state == "done", job.status
    assert len(job.action_names) == 1
    assert "fell back to the direct prompt" in job.status
    assert not job.fell_back  # the backend handled it: no second request
    rt = bpy.context.window_manager.irg_motion
    assert rt.trace and rt.trace == job.trace  # the trace's text reached the panel
    assert actions.version_info(bpy.data.actions[job.action_names[0]])["round"] == 1


def test_cancel_keeps_the_scene_clean(scene, addon_prefs, pump, counts):
    # A long reasoning trace (the fixture never opens <Motion> in it): Cancel stops it before any motion.
    addon_prefs.mode, addon_prefs.max_trace_tokens = "interleaved", 1300
    before = counts()
    bpy.context.scene.irg_motion.prompt = "a person runs in a circle"
    assert bpy.ops.irg.generate() == {"FINISHED"}
    job = jobs.manager.job
    assert bpy.ops.irg.cancel() == {"FINISHED"}
    pump(job, timeout=60)
    assert job.state == "cancelled", job.status
    assert job.status.startswith("Cancelled") and job.action_names == []
    assert counts() == before
    rt = bpy.context.window_manager.irg_motion
    assert rt.level == "CANCELLED" and not rt.running
    assert not bpy.ops.irg.cancel.poll()  # nothing left to cancel


def test_api_generate_apply_motion_and_versions(scene, backend_python, fixture_model, humanml3d_dir, counts):
    arm = rig.ensure_armature(bpy.context)
    made = api.generate("a person sits down", arm.name, timeout=300, mode="direct", max_motion_tokens=4,
                        backend_python=str(backend_python), model_dir=str(fixture_model))
    assert len(made) == 1 and isinstance(made[0], bpy.types.Action)
    assert api.versions(arm) == made and api.versions(arm.name) == made
    assert len(actions.version_info(made[0])["tokens"]) <= 4

    joints = np.load(humanml3d_dir / "012314_joints.npy")  # (170, 22, 3), metres, Y up, facing +Z
    scene.render.fps = 20
    before = counts()
    applied = api.apply_motion(arm, joints, fps=20, prompt="clip 012314")
    assert counts()["actions"] == before["actions"] + 1
    info = actions.version_info(applied)
    assert info["source"] == "apply" and info["prompt"] == "clip 012314" and info["frames"] == 170
    assert api.versions(arm) == made + [applied]
    assert arm.animation_data.action == applied
    # The pelvis follows the clip in Blender axes (Z up, facing -Y), scaled to the rig.
    expected = info["scale"] * skeleton.to_blender(joints[:, 0])
    for f in (0, 85, 169):
        scene.frame_set(int(info["frame_start"]) + f)
        pelvis = np.array(arm.matrix_world @ arm.pose.bones["pelvis"].head)
        assert np.abs(pelvis - expected[f]).max() < 0.01, (f, pelvis, expected[f])

    with pytest.raises(ValueError, match=r"shape \(T, 22, 3\)"):
        api.apply_motion(arm, joints[:, :21])
    with pytest.raises(ValueError, match="NaN"):
        api.apply_motion(arm, np.full((4, 22, 3), np.nan))
    assert api.versions(arm) == made + [applied]  # bad input wrote nothing


def test_unregister_stops_the_backend(scene, addon_prefs, generate):
    import irg_blender_addon
    job = generate("a person walks")
    backend = job.client
    proc = backend._proc
    assert backend.state == "ready" and proc.poll() is None
    irg_blender_addon.unregister()
    try:
        # Asked to shut down, it exits 0; on a loaded machine its teardown can outlast stop()'s
        # 2 s, and then the terminate step ends it. Either way nothing is left running.
        assert proc.poll() in (0, -signal.SIGTERM), proc.poll()
        assert backend.state == "stopped" and registry.running_clients() == []
    finally:
        irg_blender_addon.register()  # the module's fixture unregisters at its end
