"""Joining a continuation onto its source (model_backend seam math): placement, blend, figures."""
import numpy as np
import pytest

from model_backend.rig_math.seam import join, seam_report, tail_slice


def _walk(frames: int, start: float = 0.0, heading: float = 0.0, speed: float = 0.06) -> np.ndarray:
    """A stick figure of 22 joints walking along `heading` (radians from +X), swinging a limb."""
    rng = np.random.default_rng(0)
    body = rng.normal(0, 0.2, (22, 3)) + [0, 0, 1.0]
    t = np.arange(frames)[:, None]
    path = np.stack([np.cos(heading) * speed * (t[:, 0] + start), np.sin(heading) * speed * (t[:, 0] + start),
                     np.zeros(frames)], -1)
    out = body[None] + path[:, None, :]
    out[:, 5, 2] += 0.2 * np.sin(0.3 * (t[:, 0] + start))
    return out


def test_tail_slice_takes_two_seconds_as_whole_tokens():
    assert tail_slice(100) == slice(59, 100)        # 10 tokens = 40 frames + 1
    assert tail_slice(14) == slice(1, 14)           # a short source: as many whole tokens as fit
    with pytest.raises(ValueError, match="at least 5"):
        tail_slice(4)


def test_join_places_the_continuation_where_the_source_ends_and_does_not_pop():
    src = _walk(100)
    tail = tail_slice(len(src))
    prefix = (tail.stop - tail.start - 1) // 4
    # what a decoder gives: the tail and what follows, at the origin and turned 70 degrees
    truth = _walk(100 + 60)[tail.start:]
    c, s = np.cos(1.2), np.sin(1.2)
    moved = (truth - truth[0, 0] * [1, 1, 0]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    joined = join(src, moved, prefix)
    assert joined.seam == 99 and len(joined.joints) == 99 + len(moved) - 4 * prefix
    np.testing.assert_allclose(joined.joints[:tail.start], src[:tail.start])
    np.testing.assert_allclose(joined.joints, _walk(160)[:len(joined.joints)], atol=1e-9)  # exact placement back
    figures = seam_report(joined)
    assert figures["seam_p95"] <= figures["motion_p95"] * 1.01


def test_join_blends_a_reconstruction_that_differs_from_the_source():
    src = _walk(80)
    tail = tail_slice(len(src))
    prefix = (tail.stop - tail.start - 1) // 4
    noisy = _walk(80 + 40)[tail.start:] + np.random.default_rng(1).normal(0, 0.03, (41 + 40, 22, 3))
    joined = join(src, noisy - noisy[0, 0] * [1, 1, 0], prefix)
    figures = seam_report(joined)
    assert figures["seam_max"] < 0.25 and figures["ratio"] < 1.5, figures


def test_join_refuses_a_continuation_with_nothing_new():
    src = _walk(50)
    with pytest.raises(ValueError, match="added nothing"):
        join(src, src[:40], 10)
    with pytest.raises(ValueError, match="frames, joints, 3"):
        join(src, src[:, :5], 2)
