"""Training motions that show their label: one window per clip, checked after the VQ-VAE round trip.

A clip's label holds for the clip, not for every stretch of it: a wave clip starts and ends
standing, a turn clip walks straight before turning, and the narrow VQ-VAE smooths some
swings away. Trained on random windows, a small model learns those stretches as often as
the action and, under greedy decoding, produces their blend. So every training clip is cut
once, before training, to the window of at most `MAX_MOTION_TOKENS` codes (holds squeezed,
the window nearest the clip's centre first) whose *decoded* motion passes its label's
kinematic check (`label_checks`, independent of the model); a clip with no such window is
left out. The motions the model learns are then ones that show their label as decoded.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from .label_checks import CHECKS, check
from .tasks import MAX_MOTION_TOKENS, Clip, squeeze_holds

__all__ = ["window_starts", "showing_window", "select_exemplars"]

STRIDE = 4      # codes between candidate windows (0.8 s)
BATCH = 32      # windows decoded per call


def window_starts(length: int, size: int = MAX_MOTION_TOKENS, stride: int = STRIDE) -> list[int]:
    """Start indices of candidate windows of `size` codes in `length`, nearest the centre first."""
    if length <= size:
        return [0]
    last = length - size
    starts = set(range(0, last + 1, stride)) | {last}
    return sorted(starts, key=lambda s: (abs(2 * s - last), s))


def showing_window(codes: Sequence[int], label: str, codec: Any) -> list[int] | None:
    """The first window (centre outwards) of `codes`, holds squeezed, whose decoded motion passes
    `label`'s check; None when none does."""
    squeezed = squeeze_holds(codes)
    if len(squeezed) < 2:
        return None
    windows = [squeezed[s:s + MAX_MOTION_TOKENS] for s in window_starts(len(squeezed))]
    for i in range(0, len(windows), BATCH):
        chunk = windows[i:i + BATCH]
        for window, motion in zip(chunk, codec.decode_batch(chunk)):
            if check(label, motion.joints, codec.fps)[0]:
                return window
    return None


def select_exemplars(clips: Sequence[Clip], codec: Any) -> tuple[list[Clip], dict[str, dict[str, int]]]:
    """Train clips cut to their showing window, clips without one dropped, and per label how many
    train clips were kept of how many. Held-out clips, labels without a check, and a label none of
    whose clips shows it (it would otherwise be forgotten) are kept as they are."""
    out: list[Clip] = []
    cut: dict[str, list[Clip]] = {}
    whole: dict[str, list[Clip]] = {}
    for clip in clips:
        if clip.split != "train" or clip.content not in CHECKS:
            out.append(clip)
            continue
        whole.setdefault(clip.content, []).append(clip)
        window = showing_window(clip.codes, clip.content, codec)
        if window is not None:
            cut.setdefault(clip.content, []).append(replace(clip, codes=tuple(window)))
    for label in sorted(whole):
        out += cut.get(label) or whole[label]
    return out, {label: {"kept": len(cut.get(label, [])), "clips": len(whole[label])} for label in sorted(whole)}
