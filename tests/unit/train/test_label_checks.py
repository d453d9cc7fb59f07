"""Each label check on synthetic joints whose answer is known (HumanML3D axes: Y up, facing +Z, left +X)."""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.rig_math.skeleton import HUMANML3D
from model_backend.train.label_checks import CHECKS, check, label_table, measure, passing_labels

FPS = 20.0
J = {name: i for i, name in enumerate(HUMANML3D.joint_names)}
# A standing pose, arms down (metres).
STAND = np.array([
    (0, 0.95, 0), (0.09, 0.88, 0), (-0.09, 0.88, 0), (0, 1.05, 0), (0.1, 0.5, 0), (-0.1, 0.5, 0),
    (0, 1.18, 0), (0.1, 0.08, 0), (-0.1, 0.08, 0), (0, 1.24, 0), (0.1, 0.02, 0.12), (-0.1, 0.02, 0.12),
    (0, 1.45, 0), (0.07, 1.38, 0), (-0.07, 1.38, 0), (0, 1.55, 0.03), (0.18, 1.38, 0), (-0.18, 1.38, 0),
    (0.2, 1.1, 0), (-0.2, 1.1, 0), (0.21, 0.85, 0.03), (-0.21, 0.85, 0.03),
], dtype=np.float64)


def still(seconds: float = 4.0) -> np.ndarray:
    return np.repeat(STAND[None], int(seconds * FPS), axis=0)


def rot_y(points: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate (T, J, 3) about +Y by angle (T,) (positive: +Z towards +X, counter-clockwise from above)."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    out = points.copy()
    out[..., 0] = c * points[..., 0] + s * points[..., 2]
    out[..., 2] = -s * points[..., 0] + c * points[..., 2]
    return out


def moving(velocity: tuple[float, float, float], hop: float = 0.0, seconds: float = 4.0) -> np.ndarray:
    """The standing pose carried at a constant velocity (m/s); `hop` lifts the whole body off the
    floor every other 0.2 s (a flight phase)."""
    j = still(seconds)
    t = np.arange(len(j)) / FPS
    j = j + t[:, None, None] * np.asarray(velocity)
    j[:, :, 1] += hop * ((np.arange(len(j)) // 4) % 2)[:, None]
    return j


def turning(degrees: float, seconds: float = 4.0) -> np.ndarray:
    """Walking forward at 1 m/s along a heading that turns by `degrees` (counter-clockwise positive)."""
    n = int(seconds * FPS)
    yaw = np.radians(degrees) * np.arange(n) / (n - 1)
    body = rot_y(np.repeat(STAND[None], n, axis=0), yaw)
    step = np.stack([np.sin(yaw), np.zeros(n), np.cos(yaw)], axis=1) / FPS
    return body + np.cumsum(step, axis=0)[:, None, :]


def raise_hand(j: np.ndarray, side: str, wave: bool = False) -> np.ndarray:
    """Lift one arm straight up from the shoulder; with `wave`, swing the forearm sideways 10 cm at 2 Hz."""
    j = j.copy()
    shoulder = j[:, J[f"{side}_shoulder"]]
    j[:, J[f"{side}_elbow"]] = shoulder + [0, 0.28, 0]
    j[:, J[f"{side}_wrist"]] = shoulder + [0, 0.52, 0]
    if wave:
        t = np.arange(len(j)) / FPS
        j[:, J[f"{side}_wrist"], 0] += 0.1 * np.sin(2 * np.pi * 2.0 * t)
    return j


def bow(seconds: float = 4.0, degrees: float = 40.0) -> np.ndarray:
    """Tilt everything above the pelvis forward (towards +Z) by up to `degrees` and back."""
    j = still(seconds)
    n = len(j)
    angle = np.radians(degrees) * np.sin(np.pi * np.arange(n) / (n - 1))
    upper = [J[n_] for n_ in ("spine1", "spine2", "spine3", "neck", "head", "left_collar", "right_collar",
                              "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                              "left_wrist", "right_wrist")]
    rel = j[:, upper] - j[:, :1]
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    y, z = rel[..., 1].copy(), rel[..., 2].copy()
    rel[..., 1], rel[..., 2] = c * y - s * z, s * y + c * z
    j[:, upper] = j[:, :1] + rel
    return j


CASES = {
    "walk": moving((0, 0, 1.2)),
    "run": moving((0, 0, 3.0), hop=0.1),
    "walk-back": moving((0, 0, -0.8)),
    "walk-left": moving((0.5, 0, 0.8)),
    "walk-right": moving((-0.5, 0, 0.8)),
    "walk-turn-left": turning(90),
    "walk-turn-right": turning(-90),
    "raise-up-left-hand": raise_hand(still(), "left"),
    "raise-up-right-hand": raise_hand(still(), "right"),
    "raise-up-both-hands": raise_hand(raise_hand(still(), "left"), "right"),
    "wave-left-hand": raise_hand(still(), "left", wave=True),
    "wave-right-hand": raise_hand(still(), "right", wave=True),
    "wave-both-hands": raise_hand(raise_hand(still(), "left", wave=True), "right", wave=True),
    "bow": bow(),
}


def test_every_check_has_a_case():
    assert set(CASES) == set(CHECKS) and len(CHECKS) >= 10


@pytest.mark.parametrize("label", list(CASES))
def test_each_motion_passes_its_own_check_and_no_other(label):
    assert passing_labels(CASES[label], FPS) == [label]


def test_standing_still_passes_nothing():
    assert passing_labels(still(), FPS) == []


def test_measures_have_the_documented_signs_and_units():
    walk = measure(CASES["walk"], FPS)
    assert walk.speed == pytest.approx(1.2) and walk.forward == pytest.approx(1.2) and walk.flight == 0
    assert measure(CASES["walk-back"], FPS).forward == pytest.approx(-0.8)
    assert measure(CASES["walk-left"], FPS).left == pytest.approx(0.5)
    # 80 frames turning 90 degrees; the mean headings of the first and last 5 frames are 75 frames apart.
    assert measure(CASES["walk-turn-left"], FPS).turn == pytest.approx(90 * 75 / 79)
    assert measure(CASES["run"], FPS).flight == pytest.approx(0.5, abs=0.05)
    assert measure(CASES["bow"], FPS).lean == pytest.approx(40, abs=0.5)
    wave = measure(CASES["wave-right-hand"], FPS)
    assert wave.right_raised == 1.0 and wave.left_raised == 0.0
    assert wave.right_swings == pytest.approx(16, abs=1)  # 4 s at 2 Hz: 8 cycles, two legs each


def test_a_slow_run_without_flight_is_a_walk_and_a_fast_one_is_a_run():
    assert check("run", moving((0, 0, 1.4)), FPS)[0] is False
    assert check("walk", moving((0, 0, 1.4)), FPS)[0] is True
    assert check("run", moving((0, 0, 1.4), hop=0.1), FPS)[0] is True  # a flight phase
    assert check("run", moving((0, 0, 2.2)), FPS)[0] is True


def test_the_check_follows_the_frame_rate():
    fast = CASES["walk"][::2]  # the same motion sampled at 10 fps
    assert measure(fast, FPS / 2).speed == pytest.approx(1.2)
    assert measure(fast, FPS).speed == pytest.approx(2.4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no check for label 'jump'"):
        check("jump", still(), FPS)
    with pytest.raises(ValueError, match=r"shape \(frames >= 2, 22, 3\)"):
        measure(np.zeros((10, 21, 3)))
    bad = still()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        measure(bad)


def test_label_table_lists_names_checks_and_verbs():
    rows = label_table()
    assert [r["label"] for r in rows] == list(CHECKS)
    assert all(r["check"] and r["verb"] and r["rule"] for r in rows)
    assert {r["label"]: r["check"] for r in rows}["walk-turn-left"] == "turns_left"
