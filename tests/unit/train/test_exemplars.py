"""Training windows that show their label after the VQ-VAE round trip (model_backend.train.exemplars).

The real-motion tests encode MoMask's example clip (real capture of a person walking on a
right curve) with the demo model's VQ-VAE; decoded, it passes the walk check.
"""
from __future__ import annotations

import numpy as np
import pytest

from model_backend.train import tasks as T
from model_backend.train.exemplars import select_exemplars, showing_window, window_starts
from model_backend.train.label_checks import check


def test_window_starts_go_from_the_centre_outwards_and_reach_the_end():
    assert window_starts(30) == [0]
    starts = window_starts(60)             # 49-code windows in 60 codes: starts 0..11
    assert starts[0] in (4, 8) and 0 in starts and 11 in starts
    centre = 11 / 2
    assert [abs(s - centre) for s in starts] == sorted(abs(s - centre) for s in starts)
    assert max(window_starts(200, size=49, stride=4)) == 151


@pytest.fixture(scope="module")
def walking(demo_model, humanml3d_dir):
    """(codec, codes) of MoMask's example clip encoded by the demo model's VQ-VAE."""
    from model_backend.vq.codec import MotionCodec
    from model_backend.train.vq_train import encode_features

    codec = MotionCodec.from_dir(demo_model)
    features = np.load(humanml3d_dir / "momask_000612_features.npy").astype(np.float32)
    return codec, encode_features(codec, features)


def test_a_window_is_found_only_for_the_label_the_motion_shows(walking):
    codec, codes = walking
    window = showing_window(codes, "walk", codec)
    assert window is not None and 2 <= len(window) <= T.MAX_MOTION_TOKENS
    assert check("walk", codec.decode(window).joints, codec.fps)[0]
    squeezed = T.squeeze_holds(codes)
    assert any(squeezed[s:s + len(window)] == window for s in range(len(squeezed)))  # a window of the clip
    assert showing_window(codes, "run", codec) is None


def test_select_exemplars_cuts_drops_and_keeps(walking):
    codec, codes = walking
    clips = [T.Clip("walk-1", tuple(codes), "walk", "normal"),
             T.Clip("walk-2", tuple(codes[:3]), "walk", "normal"),  # too short to show it
             T.Clip("run-1", tuple(codes), "run", "normal"),      # shows no run at all
             T.Clip("walk-test", tuple(codes), "walk", "normal", "test")]
    kept, shown = select_exemplars(clips, codec)
    assert shown == {"walk": {"kept": 1, "clips": 2}, "run": {"kept": 0, "clips": 1}}
    by_name = {c.name: c for c in kept}
    assert set(by_name) == {"walk-1", "run-1", "walk-test"}
    assert len(by_name["walk-1"].codes) <= T.MAX_MOTION_TOKENS
    assert by_name["run-1"].codes == tuple(codes)        # a label none of whose clips shows it stays whole
    assert by_name["walk-test"].codes == tuple(codes)   # held-out clips are never cut
