"""The demo model's data pipeline: Bandai-layout BVH -> 22 HumanML3D joints -> 20 fps -> features -> cache.

No dataset needed: the tests write a few clips in the Bandai Namco layout themselves.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from bandai_clips import write_bandai_bvh, write_dataset

from model_backend.motion.bvh import bvh_positions, read_bvh
from model_backend.motion.features import features_to_joints
from model_backend.rig_math.skeleton import HUMANML3D
from model_backend.train.bandai import SPINE_FRACTIONS, clip_joints, list_clips, to_humanml3d
from model_backend.train.dataset import build_cache, heldout_split, load_cache, process_clip
from model_backend.train.label_checks import measure


def test_position_channels_replace_the_offset(tmp_path):
    data = read_bvh(write_bandai_bvh(tmp_path / "a.bvh", frames=3, spine_channel_y=20.0))
    pos = bvh_positions(data)
    spine, hips = data.names.index("Spine"), data.names.index("Hips")
    np.testing.assert_allclose(pos[:, spine] - pos[:, hips], [[0, 20, 0]] * 3, atol=1e-9)
    # Channels equal to the offsets (the dataset's case) give the rest skeleton moved by the hips.
    pos = bvh_positions(read_bvh(write_bandai_bvh(tmp_path / "b.bvh", frames=3)))
    np.testing.assert_allclose(pos[0, data.names.index("Head")], [0, 95 + 15 + 10 + 16 + 7, 0], atol=1e-9)


def test_joint_map_places_every_humanml3d_joint(tmp_path):
    joints, fps = clip_joints(write_bandai_bvh(tmp_path / "walk.bvh"))
    assert fps == pytest.approx(30, rel=1e-4) and joints.shape == (61, 22, 3)
    j = {name: joints[0, i] for i, name in enumerate(HUMANML3D.joint_names)}
    np.testing.assert_allclose(j["pelvis"], [0, 0.95, 0], atol=1e-9)  # centimetres became metres
    assert j["left_hip"][0] > 0 > j["right_hip"][0]  # left at +X, as in HumanML3D
    assert j["left_wrist"][0] > 0 > j["right_wrist"][0]
    np.testing.assert_allclose(j["head"], [0, 1.43, 0], atol=1e-9)
    # spine1..3 lie on the Hips-Neck line (0.95 -> 1.36 m) at their arc-length fractions, in order.
    for name, fraction in SPINE_FRACTIONS.items():
        np.testing.assert_allclose(j[name], [0, 0.95 + fraction * 0.41, 0], atol=1e-9)
    assert j["pelvis"][1] < j["spine1"][1] < j["spine2"][1] < j["spine3"][1] < j["neck"][1]
    np.testing.assert_allclose(joints[-1, 0, 2] - joints[0, 0, 2], 60 * 0.04, atol=1e-9)


def test_joint_map_names_a_foreign_skeleton(bvh_dir):
    data = read_bvh(bvh_dir / "mocapbank_19joint_30fps.bvh")
    with pytest.raises(ValueError, match="not a Bandai Namco skeleton.*missing"):
        to_humanml3d(bvh_positions(data), data.names)


def test_clip_becomes_20fps_features_that_decode_to_its_joints(tmp_path):
    joints, features = process_clip(write_bandai_bvh(tmp_path / "walk.bvh", frames=61))
    assert features.shape == (40, 263) and joints.shape == (40, 22, 3)  # 2 s: 41 frames at 20 fps, one less
    np.testing.assert_allclose(features_to_joints(features), joints, atol=1e-5)
    # 4 cm per frame at 30 fps is 1.2 m/s forward: the heading-frame z velocity is 6 cm per 20 fps frame.
    np.testing.assert_allclose(features[:, 2], 0.06, atol=1e-6)
    np.testing.assert_allclose(features[:, 1], 0.0, atol=1e-6)


def test_turning_clip_keeps_its_turn(tmp_path):
    # A positive Y rotation turns the facing from +Z towards +X (the left): counter-clockwise from above.
    joints, features = process_clip(write_bandai_bvh(tmp_path / "turn.bvh", frames=91, yaw_deg_per_frame=1.0))
    # 60 frames at 1.5 degrees; the turn compares the mean heading of the last and first 5 frames.
    assert measure(features_to_joints(features)).turn == pytest.approx(55 * 1.5, abs=0.5)
    assert features[:, 0].sum() < 0  # HumanML3D's channel 0 is the heading-frame yaw: negative to the left


def test_cache_labels_and_split(tmp_path):
    clips = {1: [("bow", "happy", 1), ("bow", "sad", 1)],
             2: [("walk", "normal", i) for i in range(1, 11)] + [("run", "elderly", 1)]}
    root = write_dataset(tmp_path / "data", clips)
    listed = list_clips(root)
    assert [c.content for c in listed].count("walk") == 10 and listed[0].name == "dataset-1_bow_happy_001"
    assert {(c.dataset, c.style) for c in listed if c.content == "bow"} == {(1, "happy"), (1, "sad")}
    held = heldout_split(listed, seed=0)
    assert held == heldout_split(listed, seed=0) != heldout_split(listed, seed=1)
    # One of each content with at least 2 clips; a single clip stays in training.
    assert sorted(n.split("_")[1] for n in held) == ["bow", "walk"]

    motion = build_cache(root, tmp_path / "cache.npz", show_progress=False)
    again = load_cache(tmp_path / "cache.npz")
    assert len(again) == 13 and again.offsets[-1] == len(again.features) == len(again.joints)
    assert set(again.names[again.heldout]) == held
    np.testing.assert_array_equal(again.features, motion.features)
    i = again.indices(content="run")[0]
    np.testing.assert_allclose(again.clip_features(i)[:, 2], 0.09, atol=1e-6)


def test_bad_labels_and_missing_dataset_are_named(tmp_path):
    root = write_dataset(tmp_path / "data", {1: [("bow", "happy", 1)],
                                             2: [("run", "normal", 1), ("walk", "normal", 1)]})
    meta = root / "dataset" / "Bandai-Namco-Research-Motiondataset-2" / "data" / "dataset-2_walk_normal_001.json"
    meta.write_text(json.dumps({"content": 0, "style": 0}))  # says run
    with pytest.raises(ValueError, match="'run'/'normal' disagree with the file name"):
        list_clips(root)
    meta.write_text(json.dumps({"content": 7, "style": 0}))
    with pytest.raises(ValueError, match="does not index the cfg label files"):
        list_clips(root)
    with pytest.raises(FileNotFoundError, match="clone of"):
        list_clips(tmp_path / "nowhere")
