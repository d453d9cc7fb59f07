"""A generated version the animator edited by hand is critiqued and refined as edited: its keys
are sampled and sent as joints (the backend encodes them), not the tokens it was made from, and
the metadata says the source was edited. Real backend subprocess, tiny fixture model."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from irg_blender_addon import api
from irg_blender_addon.anim import actions, compat
from irg_blender_addon.core import protocol, skeleton
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.rig import armature as rig

TRACE = 260


@pytest.fixture()
def fast(backend_python, fixture_model) -> dict:
    return dict(backend_python=str(backend_python), model_dir=str(fixture_model), mode="direct",
                max_motion_tokens=6, max_trace_tokens=TRACE, timeout=120)


def test_an_edited_version_is_sampled_and_its_refinement_says_so(scene, humanml3d_dir, fast):
    scene.render.fps = 20
    arm = rig.create_default_rig(bpy.context)
    joints = skeleton.to_blender(np.load(humanml3d_dir / "012314_joints.npy"))[:40]
    version = actions.write_version(arm, joints, fps=20.0, prompt="a person walks", tokens=[3, 4, 5, 6])
    assert jobs.motion_source(version, arm) == {"tokens": [3, 4, 5, 6]}  # untouched: its own tokens

    curve = next(fc for fc in compat.action_fcurves(version)
                 if fc.data_path == 'pose.bones["left_elbow"].rotation_quaternion' and fc.array_index == 1)
    for key in curve.keyframe_points:  # the animator bends the left elbow on every frame
        key.co.y += 0.5
    curve.update()
    assert actions.is_edited(version)
    with pytest.raises(ValueError, match="edited by hand: select the armature"):
        jobs.motion_source(version, None)

    review = api.critique(version, armature=arm, **fast)
    sent = jobs.manager.job.motion
    assert "tokens" not in sent and sent["fps"] == 20.0
    edited = protocol.decode_array(sent["joints"])
    assert edited.shape == (40, 22, 3)
    elbow, wrist = skeleton.HUMANML3D.index("left_elbow"), skeleton.HUMANML3D.index("left_wrist")
    source = actions.source_motion(version)[0]
    forearm = lambda j: (j[:, wrist] - j[:, elbow]) / np.linalg.norm(j[:, wrist] - j[:, elbow], axis=-1)[:, None]
    bend = np.degrees(np.arccos(np.clip(np.sum(forearm(edited) * forearm(source), axis=-1), -1.0, 1.0)))
    assert bend.min() > 20.0  # the edit is what was sent
    assert isinstance(review["assessment"], str)
    assert actions.version_info(version)["extra"]["assessed_edited_keys"] is True

    made = api.refine(version, "swing the arms", armature=arm, **fast)
    assert "tokens" not in jobs.manager.job.motion
    info = actions.version_info(made[0])
    assert info["parent"] == version.name and info["extra"]["source_edited"] is True
    assert not actions.is_edited(made[0])  # a new version: its own keys as written
