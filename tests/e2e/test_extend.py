"""Extend end to end: the add-on encodes the end of a version (or of hand-keyed animation), the real
backend continues it from those tokens, and the new version starts with the original motion.

Seamless is measured on the keyed animation itself: the armature's joints sampled at every
scene frame. The jumps across the seam (the blended overlap, two frames either side) are
compared with the motion's own frame-to-frame change, both as 95th percentiles."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from irg_blender_addon import api
from irg_blender_addon.anim import actions, compat
from irg_blender_addon.core import protocol, skeleton
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import thumbnails
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.rig import sampling

FAST = {"mode": "direct", "temperature": 0.0, "thumbnails": False, "timeout": 180}


def _encode(job, joints: np.ndarray, fps: float) -> list[int]:
    """The backend's own encoding of some joints (a separate `encode` request)."""
    rid = job.client.send({"type": "encode", "joints": protocol.encode_array(joints.astype(np.float32)), "fps": fps})
    deadline = time.monotonic() + 60
    tokens = None
    while time.monotonic() < deadline:
        for event in job.client.poll(100):
            if event.get("id") == rid and event.get("event") == "encoded":
                tokens = event["tokens"]
            if event.get("id") == rid and event.get("event") == "done":
                return tokens
        time.sleep(0.01)
    raise AssertionError("no answer to the encode request")


def _seam_figures(armature, action, seam_frame: float, overlap_frames: float) -> dict[str, float]:
    sampled = sampling.sample_action(armature, action, normalize=False)
    steps = np.linalg.norm(np.diff(sampled.joints, axis=0), axis=-1)       # (frames - 1, 22)
    first = int(sampled.frame_start)
    lo = max(0, int(np.floor(seam_frame - overlap_frames)) - first - 2)
    hi = int(np.ceil(seam_frame)) - first + 2
    return {"seam_p95": float(np.percentile(steps[lo:hi], 95)), "seam_max": float(steps[lo:hi].max()),
            "motion_p95": float(np.percentile(steps, 95))}


def test_extend_a_version_continues_it_seamlessly(scene, backend_python, demo_model, humanml3d_dir):
    """On the demo model, whose continuation is a motion (an untrained fixture's is noise)."""
    fast = dict(FAST, backend_python=str(backend_python), model_dir=str(demo_model))
    scene.render.fps = 24
    clip = np.load(humanml3d_dir / "012314_joints.npy")                      # 170 frames at 20 fps
    source = api.apply_motion(None, clip, prompt="a person walks forward")
    armature = rig.find_target_armature(bpy.context)
    made = api.extend(source, "then the person keeps walking", seconds=3, **fast)
    job = jobs.manager.job
    assert len(made) == 1
    new = made[0]
    info = actions.version_info(new)
    extra = info["extra"]
    assert info["parent"] == source.name and info["source"] == "extend" and info["prompt"] == "then the person keeps walking"
    assert extra["prefix_tokens"] == 10 and extra["seam_index"] == 169 and extra["extended_from"] == source.name
    assert extra["extend_frame"] == pytest.approx(scene.frame_start + 169 * 24 / 20)
    # the forced tokens are the backend's own encoding of the source's last 2 s (41 frames at 20 fps)
    tail = skeleton.to_blender(clip[-41:].astype(np.float64))
    assert info["tokens"][:10] == job.prefix == _encode(job, tail, 20.0)
    assert 12 <= len(info["tokens"]) <= 25                                    # 10 forced + 3 s (15) at most
    # the new version starts with the original motion: the same joints up to the overlap
    joints, _contacts = actions.source_motion(new)
    np.testing.assert_allclose(joints[:169 - 40], skeleton.to_blender(clip[:129]), atol=1e-5)
    assert len(joints) == 169 + 4 * (len(info["tokens"]) - 10)
    assert armature.animation_data.action == new
    figures = _seam_figures(armature, new, extra["extend_frame"], 40 * 24 / 20)
    print(f"\nseam on the keyed animation (cm/frame at 24 fps): p95 {figures['seam_p95'] * 100:.2f}, "
          f"max {figures['seam_max'] * 100:.2f}; the motion's own p95 {figures['motion_p95'] * 100:.2f}")
    assert figures["seam_p95"] <= figures["motion_p95"]
    # greedy extension is deterministic; with thumbnails on (the default) the new version waits for its strip
    assert new.name not in thumbnails.queue.pending                  # thumbnails=False: none asked for
    again = api.extend(source, "then the person keeps walking", seconds=3, **dict(fast, thumbnails=True))
    assert actions.version_info(again[0])["tokens"] == info["tokens"]
    assert again[0].name in thumbnails.queue.pending
    thumbnails.queue.cancel()


def test_extend_hand_keyed_animation_and_refusals(scene, backend_python, fixture_model, counts):
    from test_workflow import hand_keyed_walk
    fast = dict(FAST, backend_python=str(backend_python), model_dir=str(fixture_model))
    scene.render.fps = 24
    arm = rig.create_default_rig(bpy.context)
    hand = hand_keyed_walk(arm)
    keys = {fc.data_path + str(fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
            for fc in compat.action_fcurves(hand)}
    before = counts()
    with pytest.raises(ValueError, match="up to 9 s"):   # 50 tokens minus the 1 s tail
        api.extend(hand, "then he waves", seconds=9.5, armature=arm, **fast)
    assert counts() == before
    made = api.extend(hand, "then he waves", seconds=1, armature=arm, **fast)
    info = actions.version_info(made[0])
    assert info["parent"] == hand.name and info["source"] == "extend"
    # 25 frames at 24 fps -> 21 at 20 fps: 5 tokens of tail, then 1 s (5 tokens) of new motion
    assert info["extra"]["prefix_tokens"] == 5 and 7 <= len(info["tokens"]) <= 10
    after = {fc.data_path + str(fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
             for fc in compat.action_fcurves(hand)}
    assert after == keys and not actions.version_info(hand)

    # a version edited by hand is extended from its keys as they are now, not from its stored joints
    version = made[0]
    assert not actions.version_info(version)["extra"]["source_edited"]
    curve = next(fc for fc in compat.action_fcurves(version) if fc.data_path.endswith("location"))
    curve.keyframe_points[-1].co.y += 0.3
    curve.update()
    assert actions.is_edited(version)
    again = api.extend(version, "then he waves", seconds=1, armature=arm, **fast)
    assert actions.version_info(again[0])["extra"]["source_edited"] is True
