"""Joining a continuation onto the motion it continues ("Extend"), numpy only.

An extension encodes the source's last seconds (`tail_slice`), forces those tokens
as the start of the next motion span, and the model carries on. The decoded span
then holds two parts: its first `4 * len(prefix)` frames re-state the source's tail
(as the VQ-VAE reconstructs it, placed at the origin facing forward, like every
decoded motion), the rest is new. `join` puts the two motions end to end:

- placement: the decoded span is turned about the vertical axis and moved on the
  floor so that its re-stated tail lies on the source's tail (a weighted 2-D
  Procrustes fit over all joints of the overlap, the weights growing towards the
  seam, so root position and facing agree where the new motion starts);
- blend: over the overlap the source fades into the placed span (smoothstep
  weights), so nothing pops: the frames before the overlap are the source's own,
  the frames after it the model's.

Joints are (T, J, 3) in Blender axes (Z up), metres, at the model's frame rate.
`seam_report` gives the figures the acceptance asks for: the 95th percentile of
the joint jumps across the seam against the motion's own frame-to-frame change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FRAMES_PER_TOKEN", "TAIL_SECONDS", "Joined", "join", "seam_report", "tail_slice"]

FRAMES_PER_TOKEN = 4
TAIL_SECONDS = 2.0


def tail_slice(frames: int, fps: float = 20.0, seconds: float = TAIL_SECONDS) -> slice:
    """The source frames to encode as the prefix: the last `seconds`, cut to 4N + 1 frames
    (N tokens; the encoder needs one frame more than it covers), N >= 1.

    ValueError for a source of fewer than 5 frames (one token needs them)."""
    if frames < FRAMES_PER_TOKEN + 1:
        raise ValueError(f"the motion has {frames} frame(s); extending needs at least {FRAMES_PER_TOKEN + 1} "
                         f"({(FRAMES_PER_TOKEN + 1) / fps:.2f} s at {fps:g} fps)")
    tokens = max(1, min(int(round(seconds * fps / FRAMES_PER_TOKEN)), (frames - 1) // FRAMES_PER_TOKEN))
    return slice(frames - tokens * FRAMES_PER_TOKEN - 1, frames)


@dataclass
class Joined:
    """The source and its continuation as one motion."""

    joints: np.ndarray      # (T, J, 3): source frames, the blended overlap, then the new frames
    seam: int               # index of the first frame that is the model's alone (the new motion starts)
    overlap: slice          # the frames where the source fades into the continuation
    rotation: float         # radians about Z applied to the continuation
    offset: np.ndarray      # (3,) floor translation applied to the continuation (z is 0)


def _smoothstep(n: int) -> np.ndarray:
    t = (np.arange(n) + 1.0) / (n + 1.0)
    return t * t * (3.0 - 2.0 * t)


def _fit_on_floor(moving: np.ndarray, fixed: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """Angle about Z and floor offset that best put `moving` onto `fixed` ((F, J, 3) each; per-frame weights)."""
    w = np.repeat(weights, moving.shape[1])
    a, b = moving[..., :2].reshape(-1, 2), fixed[..., :2].reshape(-1, 2)
    ca, cb = (w[:, None] * a).sum(0) / w.sum(), (w[:, None] * b).sum(0) / w.sum()
    a0, b0 = a - ca, b - cb
    cross = float((w * (a0[:, 0] * b0[:, 1] - a0[:, 1] * b0[:, 0])).sum())
    dot = float((w * (a0 * b0).sum(1)).sum())
    angle = float(np.arctan2(cross, dot))
    c, s = np.cos(angle), np.sin(angle)
    shift = cb - np.array([c * ca[0] - s * ca[1], s * ca[0] + c * ca[1]])
    return angle, np.array([shift[0], shift[1], 0.0])


def _place(joints: np.ndarray, angle: float, offset: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return joints @ rot.T + offset


def join(source: np.ndarray, continuation: np.ndarray, prefix_tokens: int) -> Joined:
    """The source followed by the continuation (decoded from prefix + new tokens), seamlessly.

    source: the whole motion being extended; its last 4 * prefix_tokens + 1 frames were
    encoded as the prefix (`tail_slice`). continuation: the decoded span, whose first
    4 * prefix_tokens frames re-state that tail. ValueError when the shapes disagree or
    the continuation holds no new frame."""
    src = np.asarray(source, dtype=np.float64)
    cont = np.asarray(continuation, dtype=np.float64)
    overlap = FRAMES_PER_TOKEN * int(prefix_tokens)
    if src.ndim != 3 or cont.ndim != 3 or src.shape[1:] != cont.shape[1:] or src.shape[2] != 3:
        raise ValueError(f"source {src.shape} and continuation {cont.shape} must both be (frames, joints, 3)")
    if prefix_tokens < 1 or len(src) < overlap + 1:
        raise ValueError(f"{prefix_tokens} prefix token(s) need a source of at least {overlap + 1} frames, "
                         f"got {len(src)}")
    if len(cont) <= overlap:
        raise ValueError(f"the continuation has {len(cont)} frames, no more than the {overlap} that re-state "
                         "the source: the model added nothing")
    start = len(src) - overlap - 1          # the tail's first frame: the continuation's frame 0
    fade = _smoothstep(overlap)
    angle, offset = _fit_on_floor(cont[:overlap], src[start:start + overlap], fade)
    placed = _place(cont, angle, offset)
    blended = (1.0 - fade)[:, None, None] * src[start:start + overlap] + fade[:, None, None] * placed[:overlap]
    joints = np.concatenate([src[:start], blended, placed[overlap:]])
    return Joined(joints, start + overlap, slice(start, start + overlap), angle, offset)


def seam_report(joined: Joined, context: int = 2) -> dict[str, float]:
    """Joint jumps (metres per frame, every joint) across the seam against the whole motion's.

    The seam is the overlap plus `context` frames either side. Returns seam_p95, seam_max,
    motion_p95 (all frames) and their ratio seam_p95 / motion_p95."""
    steps = np.linalg.norm(np.diff(joined.joints, axis=0), axis=-1)    # (T-1, J)
    lo = max(0, joined.overlap.start - context - 1)
    hi = min(len(steps), joined.seam + context)
    seam = steps[lo:hi]
    motion_p95 = float(np.percentile(steps, 95))
    seam_p95 = float(np.percentile(seam, 95))
    return {"seam_p95": seam_p95, "seam_max": float(seam.max()), "motion_p95": motion_p95,
            "ratio": seam_p95 / motion_p95 if motion_p95 > 0 else float("inf")}
