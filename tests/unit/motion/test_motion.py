"""HumanML3D features <-> joints: golden recovery, extraction, round trips, KIT-ML, resampling."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model_backend.motion.features import (canonicalize, contacts_from_features, features_to_joints,
                                           joints_to_features, resample)
from model_backend.rig_math.skeleton import HUMANML3D, KIT_ML

# Heading smoothing reaches 80 frames ahead; the released clip lacks the last source
# frame, so only rows whose heading window ends inside the clip can match exactly.
SMOOTH_RADIUS = 80


@pytest.fixture(scope="module")
def clip(humanml3d_dir):
    features = np.load(humanml3d_dir / "012314_features.npy")
    joints = np.load(humanml3d_dir / "012314_joints.npy")
    return features, joints


def yaw(angle, v):
    """Rotate (..., 3) about +Y by angle (broadcast), right-handed."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([v[..., 0] * c + v[..., 2] * s, v[..., 1], -v[..., 0] * s + v[..., 2] * c], -1)


def test_golden_recovery_matches_released_joints(clip):
    features, joints = clip
    out = features_to_joints(features)
    assert out.shape == (170, 22, 3) and out.dtype == np.float32
    assert np.abs(out - joints).max() < 1e-4  # achieved: 2.4e-7 m


def test_released_joints_are_already_canonical(clip):
    _, joints = clip
    assert np.abs(canonicalize(joints) - joints).max() < 1e-6


def test_canonicalize_puts_on_floor_at_origin_facing_plus_z(clip):
    _, joints = clip
    moved = yaw(2.1, joints.astype(np.float64)) + np.array([1.5, 0.3, -2.0])
    c = canonicalize(moved)
    assert abs(c[..., 1].min()) < 1e-12
    assert np.abs(c[0, 0, [0, 2]]).max() < 1e-12
    r_hip, l_hip, r_sh, l_sh = HUMANML3D.face_joints
    across = c[0, r_hip] - c[0, l_hip] + c[0, r_sh] - c[0, l_sh]
    forward = np.cross([0.0, 1.0, 0.0], across)
    assert forward[2] > 0 and abs(forward[0]) < 1e-9
    assert np.abs(c - joints).max() < 1e-5  # undoes the move exactly


def test_round_trip_joints_features_joints_is_exact_in_the_canonical_frame(clip):
    _, joints = clip
    moved = yaw(-0.8, joints.astype(np.float64)) + np.array([-3.0, 0.5, 4.0])
    feats = joints_to_features(moved)
    assert feats.shape == (169, 263) and feats.dtype == np.float32
    back = features_to_joints(feats)
    # T-1 feature rows recover the first T-1 frames of the canonicalised motion.
    assert np.abs(back - canonicalize(moved)[:-1]).max() < 1e-4
    assert np.abs(back - joints[:-1]).max() < 1e-4


def test_round_trip_survives_turning_through_minus_z(clip):
    _, joints = clip
    j = joints.astype(np.float64)
    turn = np.linspace(0.0, 3 * np.pi, len(j))  # one and a half turns
    root = j[:, :1] * np.array([1.0, 0.0, 1.0])
    spun = yaw(turn[:, None], j - root) + root
    back = features_to_joints(joints_to_features(spun))
    assert np.abs(back - canonicalize(spun)[:-1]).max() < 1e-4


def test_extraction_reproduces_the_dataset_features(clip):
    features, joints = clip
    ours = joints_to_features(features_to_joints(features))
    ref = features[:-1]
    exact = len(joints) - 1 - SMOOTH_RADIUS  # rows 0..88 do not see the missing frame
    # Every channel, 6D rotations included, on the rows the data fully determines.
    assert np.abs(ours[:exact] - ref[:exact]).max() < 2e-5  # achieved 7.7e-6 (6D), 2.1e-7 (others)
    # Contacts are exact everywhere; later rows drift by the unknown last frame's heading (< 0.8 deg).
    assert np.array_equal(ours[:, 259:], ref[:, 259:])
    assert np.abs(ours[:, :67] - ref[:, :67]).max() < 1e-2       # achieved 6.8e-3
    assert np.abs(ours[:, 193:259] - ref[:, 193:259]).max() < 1e-3  # achieved 4.1e-4
    assert np.abs(ours[:, 67:193] - ref[:, 67:193]).max() < 2e-2   # achieved 1.3e-2


def test_features_do_not_depend_on_world_placement(clip):
    _, joints = clip
    a = joints_to_features(joints)
    b = joints_to_features(yaw(1.3, joints.astype(np.float64)) + np.array([0.4, 1.0, 0.2]))
    assert np.abs(a - b).max() < 1e-5


def test_contacts_are_the_last_four_channels_clipped(clip):
    features, _ = clip
    f = features.copy()
    f[0, 259:] = [-0.5, 0.3, 1.7, 1.0]
    c = contacts_from_features(f)
    assert c.shape == (170, 4) and c.dtype == np.float32
    assert c[0].tolist() == pytest.approx([0.0, 0.3, 1.0, 1.0])
    assert np.array_equal(c[1:], np.clip(features[1:, 259:], 0, 1))


def kit_motion(frames: int = 60) -> np.ndarray:
    """A plausible KIT-ML motion (mm): forward kinematics of swinging limbs on a walking, turning body."""
    from model_backend.motion.features import _REST_DIRECTIONS

    rest_dir = np.asarray(_REST_DIRECTIONS["KIT-ML"], dtype=float)
    lengths = np.array([0, 120, 200, 180, 150, 190, 300, 260, 190, 300, 260,
                        100, 420, 400, 80, 60, 100, 420, 400, 80, 60], dtype=float)
    t = np.arange(frames) / KIT_ML.fps
    phase = 2 * np.pi * 0.9 * t
    swing = np.zeros((frames, 21))
    swing[:, [12, 6]] = 0.5 * np.sin(phase)[:, None]
    swing[:, [17, 9]] = -0.5 * np.sin(phase)[:, None]
    swing[:, [13, 18]] = 0.3 * (1 + np.cos(phase))[:, None]
    swing[:, 7] = 0.4 + 0.2 * np.sin(2 * phase)
    heading = 0.8 * t  # turns left while walking
    pos = np.zeros((frames, 21, 3))
    rot = np.zeros((frames, 21, 3, 3))
    c, s = np.cos(heading), np.sin(heading)
    root_rot = np.stack([np.stack([c, 0 * c, s], -1), np.stack([0 * c, 1 + 0 * c, 0 * c], -1),
                         np.stack([-s, 0 * c, c], -1)], -2)
    pos[:, 0] = np.stack([600 * np.sin(heading), 950 + 20 * np.sin(2 * phase), 600 * (1 - np.cos(heading))], -1)
    rot[:, 0] = root_rot
    for j in range(1, 21):
        p = KIT_ML.parents[j]
        a = swing[:, j]
        local = np.stack([np.stack([1 + 0 * a, 0 * a, 0 * a], -1), np.stack([0 * a, np.cos(a), -np.sin(a)], -1),
                          np.stack([0 * a, np.sin(a), np.cos(a)], -1)], -2)
        rot[:, j] = rot[:, p] @ local
        pos[:, j] = pos[:, p] + rot[:, p] @ (lengths[j] * rest_dir[j])
    return pos


def test_kit_round_trip_on_a_synthetic_motion():
    j = kit_motion()
    feats = joints_to_features(j, KIT_ML)
    assert feats.shape == (59, 251)
    back = features_to_joints(feats, KIT_ML)
    assert back.shape == (59, 21, 3)
    assert np.abs(back - canonicalize(j, KIT_ML)[:-1]).max() < 0.1  # mm; achieved ~1e-4
    # 6D blocks are unit columns; contacts are 0/1.
    six = feats[:, 4 + 60:4 + 180].reshape(-1, 20, 6)
    assert np.allclose(np.linalg.norm(six[..., :3], axis=-1), 1, atol=1e-5)
    assert set(np.unique(feats[:, -4:])) <= {0.0, 1.0}


def test_contact_detection_uses_the_velocity_threshold():
    j = np.repeat(canonicalize(kit_motion(2), KIT_ML)[:1], 5, axis=0)
    left_ankle = KIT_ML.foot_joints[0]
    j[3:, left_ankle, 0] += 1.0  # 1 mm^2 squared step > 0.05: that foot moves once
    c = joints_to_features(j, KIT_ML)[:, -4:]
    assert c[:, 0].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert c[:, 1:].min() == 1.0


def test_resample_keeps_ends_and_interpolates_linearly():
    x = np.arange(31, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    y = resample(x, 30.0, 20.0)
    assert y.shape == (21, 2, 3) and y.dtype == np.float32
    assert y[0, 0, 0] == 0 and y[-1, 0, 0] == 30
    assert np.allclose(y[:, 0, 0], np.linspace(0, 30, 21))
    assert np.array_equal(resample(x, 20.0, 20.0), x)
    assert resample(x[:1], 30.0, 20.0).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0.0, 20.0)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 262)), "263"),
    (np.zeros(263), "263"),
    (np.full((4, 263), np.nan), "NaN"),
])
def test_features_to_joints_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        features_to_joints(bad)


def test_joints_to_features_rejects_bad_input(clip):
    _, joints = clip
    with pytest.raises(ValueError, match="frames >= 2"):
        joints_to_features(joints[:1])
    with pytest.raises(ValueError, match="22, 3"):
        joints_to_features(joints[:, :21])
    bad = joints.copy()
    bad[5, 3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        joints_to_features(bad)
    with pytest.raises(ValueError, match="facing"):
        joints_to_features(np.zeros((4, 22, 3)))


def test_motion_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import model_backend.motion.features; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
