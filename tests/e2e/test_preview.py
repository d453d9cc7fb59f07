"""Live preview against the real backend and the fixture model: while motion tokens stream the
armature plays ONE provisional Action that grows; the finished version replaces it; cancel, an
error or a dead backend remove it and give the armature back what it played before."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.jobs import review as review_jobs
from irg_blender_addon.rig import pose, armature as rig

TOKENS = 24  # the backend sends a preview every 8 motion tokens: 8, 16, 24


@pytest.fixture()
def preview_prefs(addon_prefs):
    addon_prefs.max_motion_tokens = TOKENS
    bpy.context.scene.irg_motion.preview = True
    return addon_prefs


def provisional() -> list[bpy.types.Action]:
    return [a for a in bpy.data.actions if a.get(generate_jobs.PREVIEW_MARK)]


def start(prompt: str = "a person runs forward") -> generate_jobs.GenerateJob:
    bpy.context.scene.irg_motion.prompt = prompt
    assert bpy.ops.irg.generate() == {"FINISHED"}
    job = jobs.manager.job
    assert job.preview and job.request()["preview"] is True
    return job


def step(job: generate_jobs.GenerateJob) -> bool:
    """One backend event, then, if it was a preview, wait for the worker and key it.

    A warm fixture model streams a whole motion in a few milliseconds, faster than a
    preview is solved; stepping makes every preview land before the next event."""
    running = job.pump(max_events=1)
    while running and job.preview_pending:
        time.sleep(0.002)
        running = job.pump(max_events=0)
    return running


def step_until_preview(job: generate_jobs.GenerateJob, timeout: float = 120.0) -> bpy.types.Action:
    """Step until the armature plays the provisional Action; return it."""
    deadline = time.monotonic() + timeout
    while not provisional():
        assert step(job), f"the job ended before a preview was keyed: {job.status}"
        assert time.monotonic() < deadline, job.status
    arm = bpy.data.objects[job.armature_name]
    assert arm.animation_data.action == provisional()[0]
    return provisional()[0]


def test_preview_grows_then_the_version_replaces_it(scene, preview_prefs, pump, counts):
    scene.render.fps = 20
    arm = rig.create_default_rig(bpy.context)
    before = counts()
    job = start()
    job.preview_interval = 0.0  # key every preview the backend sends (the UI keys at most 4 a second)
    seen = []  # (last frame keyed, played by the armature, counted as a version, fake user) per preview keyed
    deadline = time.monotonic() + 120
    running = True
    while running:
        running = step(job)  # one event at a time, so no preview is superseded in a batch
        found = provisional()
        assert len(found) <= 1  # one provisional Action, overwritten
        if found and (not seen or seen[-1][0] != found[0].frame_range[1]):
            action = found[0]
            seen.append((action.frame_range[1], arm.animation_data.action == action, action in actions.versions(arm),
                         action.use_fake_user))
        assert time.monotonic() < deadline, job.status
    assert job.state == "done", job.status
    assert job.previews_received == TOKENS // 8 == job.previews_solved == job.previews_written == len(seen)
    assert [s[0] for s in seen] == [1 + 4 * 8 * k - 1 for k in (1, 2, 3)]  # 32, 64, 96 frames from frame 1
    assert all(played and not version and not fake for _, played, version, fake in seen)
    assert provisional() == []
    version = bpy.data.actions[job.action_names[0]]
    assert arm.animation_data.action == version and actions.versions(arm) == [version]
    assert counts() == {**before, "actions": before["actions"] + 1}  # the preview left nothing behind
    assert len(actions.version_info(version)["tokens"]) == TOKENS


def test_cancel_mid_stream_restores_what_played_before(scene, preview_prefs, pump, counts):
    arm = rig.create_default_rig(bpy.context)
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    earlier = actions.write_version(arm, joints, prompt="an earlier take")
    arm.pose.bones["left_wrist"].rotation_mode = "XYZ"  # a bone the preview switches to quaternions
    before = counts()
    job = start()
    step_until_preview(job)
    assert arm.pose.bones["left_wrist"].rotation_mode == "QUATERNION"
    assert bpy.ops.irg.cancel() == {"FINISHED"}  # what Esc runs
    pump(job, timeout=60)  # whatever the backend had already sent (tokens, the motion) is not written
    assert job.state == "cancelled", job.status
    assert provisional() == [] and job.action_names == []
    assert arm.animation_data.action == earlier
    assert arm.pose.bones["left_wrist"].rotation_mode == "XYZ"
    assert counts() == before


def test_cancel_before_any_version_removes_the_rig_made_for_the_preview(scene, preview_prefs, pump, counts):
    before = counts()  # no armature: the first preview makes the default rig
    job = start()
    step_until_preview(job)
    assert job.armature_name in bpy.data.objects
    job.cancel()
    pump(job, timeout=60)
    assert job.state == "cancelled", job.status
    assert provisional() == [] and counts() == before


def test_a_dead_backend_removes_the_preview(scene, preview_prefs, pump, counts, no_backends_left):
    arm = rig.create_default_rig(bpy.context)
    before = counts()
    job = start()
    step_until_preview(job)
    backend = job.client
    backend._proc.kill()  # the backend dies mid-stream (out of memory, a crash)
    deadline = time.monotonic() + 30
    while backend.state != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # It may have sent the rest of the motion before the kill landed: drop that, as if it died right
    # after the preview; its death notice (queued by the reader after the pipe closed) stays.
    notices = [e for e in backend.poll(10_000) if e.get("event") == "error" and e.get("id") is None]
    assert len(notices) == 1 and notices[0]["code"] == "backend_exited"
    backend._events.put(notices[0])
    pump(job, timeout=30)
    assert job.state == "error" and str(job.client.log_path) in job.error, job.status  # why, and where to look
    assert provisional() == [] and counts() == before
    anim = arm.animation_data
    assert anim is None or anim.action is None
    rt = bpy.context.window_manager.irg_motion
    assert rt.level == "ERROR" and not rt.running


def test_refine_streams_a_preview_too(scene, preview_prefs, pump, counts):
    arm = rig.create_default_rig(bpy.context)
    joints = np.zeros((40, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    parent = actions.write_version(arm, joints, prompt="a person runs forward", tokens=[5] * 10)
    preview_prefs.max_trace_tokens = 300
    job = review_jobs.start_refine(bpy.context, parent, "run faster", preview=True)
    job.preview_interval = 0.0
    step_until_preview(job)
    pump(job)
    assert job.state == "done", job.status
    assert provisional() == []
    child = bpy.data.actions[job.action_names[0]]
    assert arm.animation_data.action == child and actions.version_info(child)["parent"] == parent.name


def test_preview_writes_are_throttled(scene, preview_prefs, pump):
    rig.create_default_rig(bpy.context)
    job = start()
    job.preview_interval = 1e6  # far longer than any generation, even on a loaded machine: one preview solved
    pump(job)
    assert job.state == "done", job.status
    assert job.previews_received == TOKENS // 8 and job.previews_solved == 1 and provisional() == []


def keyed(action: bpy.types.Action) -> dict[tuple[str, int], np.ndarray]:
    """(data_path, index) -> (n, 2) keyframe coordinates of every F-Curve."""
    out = {}
    for fc in compat.action_fcurves(action):
        co = np.empty(2 * len(fc.keyframe_points), dtype=np.float32)
        fc.keyframe_points.foreach_get("co", co)
        out[(fc.data_path, fc.array_index)] = co.reshape(-1, 2)
    return out


def test_previews_and_the_version_use_the_panels_retarget_options(scene, preview_prefs, counts):
    scene.render.fps = 24
    arm = rig.create_default_rig(bpy.context)
    options = scene.irg_retarget
    options.root_mode, options.smoothing = "in_place", True
    job = start()
    job.preview_interval = 0.0
    last_preview, solving_pumps = None, 0
    deadline = time.monotonic() + 120
    running = True
    while running:
        running = step(job)
        solving_pumps += job.version_pending  # the solve runs in a worker while the job keeps pumping
        if provisional():
            last_preview = keyed(provisional()[0])
        assert time.monotonic() < deadline, job.status
    assert job.state == "done", job.status
    assert solving_pumps >= 1 and not job.version_pending
    version = bpy.data.actions[job.action_names[0]]
    info = actions.version_info(version)
    assert (info["root_mode"], info["smoothing"], info["foot_lock"], info["preset"]) == (
        "in_place", True, False, "smpl_default")
    # The version holds what the main-thread solve gives for its joints, with the panel's options.
    joints, contacts = actions.source_motion(version)
    expected = pose.joints_to_channels(arm, joints, src_fps=info["src_fps"], root_mode="in_place", smoothing=True,
                                       contacts=contacts)
    curves = keyed(version)
    for b, name in enumerate(expected.bone_names):
        got = curves[(f'pose.bones["{name}"].rotation_quaternion', 0)]
        np.testing.assert_array_equal(got[:, 0], expected.frames.astype(np.float32))
        np.testing.assert_allclose(got[:, 1], expected.quaternions[:, b, 0], atol=1e-6)
    # The last preview (all the tokens) was solved with the same options: it shows the version.
    assert last_preview is not None and last_preview.keys() == curves.keys()
    assert max(np.abs(last_preview[k] - curves[k]).max() for k in curves) < 1e-5
