"""Kinematic checks of content labels, independent of any model (numpy only).

Each supported content label of the Bandai Namco dataset (names exactly as in the dataset)
has one check: a rule on measurable quantities of HumanML3D joints (Y up, metres, the
motion's own frame rate), e.g. "root speed >= 1.6 m/s while moving forward" for `run`.
A check says whether a motion shows its label, and why, so benchmarks can score generated
motions against their prompts and critiques can say what a motion does instead.

Measures (`measure`): the facing per frame is up x (left hip - right hip + left shoulder -
right shoulder); the root's horizontal velocity splits into forward (along the facing) and
left (up x facing) parts; the turn is the facing's yaw change, positive counter-clockwise
seen from above (a left turn); a hand is raised when its wrist is at most 10 cm below its
shoulder (styles such as feminine and elderly raise hands only to shoulder height); a wave
is a raised hand swinging sideways: swings of at least 2 cm between reversals of the
wrist's sideways position relative to the shoulder; flight is the fraction of frames with
both feet more than 5 cm above the floor (the 5th percentile of the lowest foot point):
walks have none, most runs some; the lean is the forward tilt of the
pelvis-to-neck line from vertical.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..rig_math.skeleton import HUMANML3D

__all__ = ["Measures", "LabelCheck", "CHECKS", "measure", "check", "passing_labels", "supported_labels"]

_J = {name: i for i, name in enumerate(HUMANML3D.joint_names)}
_UP = np.array([0.0, 1.0, 0.0])

RAISED_BELOW_SHOULDER = 0.10  # m: a wrist this far below its shoulder (or higher) is raised
SWING = 0.02                  # m: the smallest sideways swing of a wrist that counts for a wave
HAND_UP_FRACTION = 0.25       # a raised hand: raised in at least this fraction of the frames
HAND_DOWN_FRACTION = 0.05     # the other hand: raised in at most this fraction
WAVE_SWINGS = 5               # a wave: at least this many swings (raising and lowering make up to 4)
RUN_SPEED = 1.6               # m/s: faster is running even without a flight phase (elderly runs)
MIN_MOVE = 0.3                # m/s: slower is standing
TURN = 60.0                   # degrees of heading change for a turn (the dataset's turns are ~90)
OFF_FLOOR = 0.05              # m: a foot this far above the clip's floor is off it
FLIGHT = 0.15                 # running: both feet off the floor in at least this fraction of frames
# (no real walk has any flight, runs have about 30 %; 5 % failed brisk walks retargeted onto a
# rig before the retarget's ground correction, when rigid legs let a foot hover where the decoded
# legs were longer)


@dataclass(frozen=True)
class Measures:
    """What the checks look at, for one motion."""

    seconds: float
    speed: float          # mean horizontal root speed, m/s
    forward: float        # mean root velocity along the facing, m/s (negative: backwards)
    left: float           # mean root velocity to the left of the facing, m/s (negative: right)
    turn: float           # heading change, degrees, counter-clockwise seen from above (left turn) positive
    lean: float           # largest forward tilt of the pelvis-neck line, degrees
    flight: float         # fraction of frames with both feet off the floor (running)
    left_raised: float    # fraction of frames with the left wrist raised
    right_raised: float
    left_swings: int      # sideways swings of the raised left wrist
    right_swings: int

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _facing(j: np.ndarray) -> np.ndarray:
    """Unit horizontal facing per frame (T, 3)."""
    across = (j[:, _J["left_hip"]] - j[:, _J["right_hip"]]) + (j[:, _J["left_shoulder"]] - j[:, _J["right_shoulder"]])
    forward = np.cross(across, _UP)
    forward[:, 1] = 0.0
    return forward / np.maximum(np.linalg.norm(forward, axis=-1, keepdims=True), 1e-9)


def _runs(mask: np.ndarray) -> list[slice]:
    """The stretches of consecutive frames where mask holds."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2])]


def _swings(x: np.ndarray, mask: np.ndarray, min_swing: float) -> int:
    """Monotone legs of at least `min_swing` in x (a zigzag count) over the frames where mask holds."""
    count = 0
    for run in _runs(mask):
        extreme, direction = x[run.start], 0.0
        for value in x[run][1:]:
            if direction and (value - extreme) * direction > 0:
                extreme = value  # the leg goes on
            elif abs(value - extreme) >= min_swing:
                direction, extreme, count = np.sign(value - extreme), value, count + 1
    return count


def measure(joints: np.ndarray, fps: float = HUMANML3D.fps) -> Measures:
    """The `Measures` of a motion: HumanML3D joints (T >= 2, 22, 3), Y up, metres, at `fps`."""
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (HUMANML3D.num_joints, 3) or len(j) < 2:
        raise ValueError(f"joints must have shape (frames >= 2, 22, 3), got {j.shape}")
    if not np.all(np.isfinite(j)):
        raise ValueError("joints contain NaN or infinite values")
    facing = _facing(j)
    left_dir = np.cross(_UP, facing)
    velocity = np.diff(j[:, 0], axis=0) * fps
    velocity[:, 1] = 0.0
    yaw = np.unwrap(np.arctan2(facing[:, 0], facing[:, 2]))
    edge = max(1, int(round(0.25 * fps)))  # heading at each end: the mean over a quarter second
    spine = j[:, _J["neck"]] - j[:, _J["pelvis"]]
    lean = np.degrees(np.arctan2(np.sum(spine * facing, axis=-1), spine[:, 1]))
    feet = j[:, list(HUMANML3D.foot_joints), 1].min(axis=1)  # the lowest foot point per frame
    floor = np.percentile(feet, 5)
    hands = {}
    for side in ("left", "right"):
        wrist, shoulder = j[:, _J[f"{side}_wrist"]], j[:, _J[f"{side}_shoulder"]]
        raised = wrist[:, 1] - shoulder[:, 1] >= -RAISED_BELOW_SHOULDER
        sideways = np.sum((wrist - shoulder) * left_dir, axis=-1)
        hands[side] = (float(raised.mean()), _swings(sideways, raised, SWING))
    return Measures(
        seconds=len(j) / fps,
        speed=float(np.linalg.norm(velocity, axis=-1).mean()),
        forward=float(np.sum(velocity * facing[:-1], axis=-1).mean()),
        left=float(np.sum(velocity * left_dir[:-1], axis=-1).mean()),
        turn=float(np.degrees(yaw[-edge:].mean() - yaw[:edge].mean())),
        lean=float(lean.max()),
        flight=float(np.mean(feet - floor > OFF_FLOOR)),
        left_raised=hands["left"][0], right_raised=hands["right"][0],
        left_swings=hands["left"][1], right_swings=hands["right"][1],
    )


@dataclass(frozen=True)
class LabelCheck:
    """One content label's check. `verb` is the caption phrase the label stands for."""

    label: str
    name: str
    verb: str
    rule: str
    passes: Callable[[Measures], bool]


def _running(m: Measures) -> bool:
    return m.speed >= RUN_SPEED or (m.speed >= 1.1 and m.flight >= FLIGHT)


def _standing(m: Measures) -> bool:
    return m.speed < MIN_MOVE


def _one_hand(m: Measures, side: str, wave: bool) -> bool:
    other = "right" if side == "left" else "left"
    raised = getattr(m, f"{side}_raised") >= HAND_UP_FRACTION and getattr(m, f"{other}_raised") <= HAND_DOWN_FRACTION
    waving = getattr(m, f"{side}_swings") >= WAVE_SWINGS
    return _standing(m) and raised and waving == wave


def _both_hands(m: Measures, wave: bool) -> bool:
    raised = min(m.left_raised, m.right_raised) >= HAND_UP_FRACTION
    waving = max(m.left_swings, m.right_swings) >= WAVE_SWINGS
    return _standing(m) and raised and waving == wave


CHECKS: dict[str, LabelCheck] = {c.label: c for c in (
    LabelCheck("walk", "walks_forward", "walks forward",
               f"moving (speed >= {MIN_MOVE} m/s) but not running, forward >= 0.75 x speed, sideways < 0.2 x speed, "
               f"|turn| < {TURN} deg",
               lambda m: m.speed >= MIN_MOVE and not _running(m) and m.forward >= 0.75 * m.speed
               and abs(m.left) < 0.2 * m.speed and abs(m.turn) < TURN),
    LabelCheck("run", "runs_forward", "runs forward",
               f"speed >= {RUN_SPEED} m/s, or >= 1.1 m/s with both feet off the floor in >= {FLIGHT:.0%} of "
               "frames; forward >= 0.75 x speed",
               lambda m: _running(m) and m.forward >= 0.75 * m.speed),
    LabelCheck("walk-back", "moves_backward", "walks backwards",
               f"speed >= {MIN_MOVE} m/s, forward <= -0.5 x speed (against the facing)",
               lambda m: m.speed >= MIN_MOVE and m.forward <= -0.5 * m.speed),
    LabelCheck("walk-left", "moves_left", "walks diagonally to the left",
               f"speed >= {MIN_MOVE} m/s, leftward >= 0.25 x speed",
               lambda m: m.speed >= MIN_MOVE and m.left >= 0.25 * m.speed),
    LabelCheck("walk-right", "moves_right", "walks diagonally to the right",
               f"speed >= {MIN_MOVE} m/s, rightward >= 0.25 x speed",
               lambda m: m.speed >= MIN_MOVE and -m.left >= 0.25 * m.speed),
    LabelCheck("walk-turn-left", "turns_left", "walks and turns left",
               f"speed >= {MIN_MOVE} m/s, heading turns >= {TURN} deg counter-clockwise seen from above",
               lambda m: m.speed >= MIN_MOVE and m.turn >= TURN),
    LabelCheck("walk-turn-right", "turns_right", "walks and turns right",
               f"speed >= {MIN_MOVE} m/s, heading turns >= {TURN} deg clockwise seen from above",
               lambda m: m.speed >= MIN_MOVE and m.turn <= -TURN),
    LabelCheck("raise-up-left-hand", "raises_left_hand", "raises the left hand",
               f"left wrist raised in >= {HAND_UP_FRACTION:.0%} of frames, right in <= {HAND_DOWN_FRACTION:.0%}, "
               f"< {WAVE_SWINGS} swings, standing",
               lambda m: _one_hand(m, "left", wave=False)),
    LabelCheck("raise-up-right-hand", "raises_right_hand", "raises the right hand",
               f"right wrist raised in >= {HAND_UP_FRACTION:.0%} of frames, left in <= {HAND_DOWN_FRACTION:.0%}, "
               f"< {WAVE_SWINGS} swings, standing",
               lambda m: _one_hand(m, "right", wave=False)),
    LabelCheck("raise-up-both-hands", "raises_both_hands", "raises both hands",
               f"both wrists raised in >= {HAND_UP_FRACTION:.0%} of frames, < {WAVE_SWINGS} swings, standing",
               lambda m: _both_hands(m, wave=False)),
    LabelCheck("wave-left-hand", "waves_left_hand", "waves the left hand",
               f"left wrist raised in >= {HAND_UP_FRACTION:.0%} of frames and swinging >= {WAVE_SWINGS} times, "
               f"right raised in <= {HAND_DOWN_FRACTION:.0%}, standing",
               lambda m: _one_hand(m, "left", wave=True)),
    LabelCheck("wave-right-hand", "waves_right_hand", "waves the right hand",
               f"right wrist raised in >= {HAND_UP_FRACTION:.0%} of frames and swinging >= {WAVE_SWINGS} times, "
               f"left raised in <= {HAND_DOWN_FRACTION:.0%}, standing",
               lambda m: _one_hand(m, "right", wave=True)),
    LabelCheck("wave-both-hands", "waves_both_hands", "waves both hands",
               f"both wrists raised in >= {HAND_UP_FRACTION:.0%} of frames, >= {WAVE_SWINGS} swings, standing",
               lambda m: _both_hands(m, wave=True)),
    LabelCheck("bow", "bends_forward", "bows",
               f"speed < {MIN_MOVE} m/s, the pelvis-neck line tilts forward >= 25 deg",
               lambda m: _standing(m) and m.lean >= 25.0),
)}


def supported_labels() -> list[str]:
    """The content labels that have a check, in a fixed order."""
    return list(CHECKS)


def check(label: str, joints: np.ndarray, fps: float = HUMANML3D.fps) -> tuple[bool, Measures]:
    """Whether a motion shows `label`, and the measures the answer rests on."""
    if label not in CHECKS:
        raise ValueError(f"no check for label {label!r}; checked labels: {', '.join(CHECKS)}")
    m = measure(joints, fps)
    return bool(CHECKS[label].passes(m)), m


def passing_labels(joints: np.ndarray, fps: float = HUMANML3D.fps) -> list[str]:
    """Every checked label the motion passes (a description of what it shows)."""
    m = measure(joints, fps)
    return [label for label, c in CHECKS.items() if c.passes(m)]


# ---------------------------------------------------------------- validation on real clips

def validate(motion, heldout: bool | None = True) -> dict[str, dict]:
    """Each check on real clips of one split (`MotionSet`): its positive rate on clips of its own
    label and its false-positive rate on clips of every other label, with the clip counts."""
    clips = motion.indices(heldout=heldout)
    measures = {i: measure(motion.clip_joints(i), motion.fps) for i in clips}
    table = {}
    for label, c in CHECKS.items():
        own = [i for i in clips if motion.contents[i] == label]
        other = [i for i in clips if motion.contents[i] != label]
        false = [i for i in other if c.passes(measures[i])]
        table[label] = {
            "check": c.name, "clips": len(own), "other_clips": len(other),
            "positive_rate": float(np.mean([c.passes(measures[i]) for i in own])) if own else float("nan"),
            "false_positive_rate": len(false) / max(len(other), 1),
            "false_positive_labels": sorted({str(motion.contents[i]) for i in false}),
        }
    return table


def label_table(motion=None) -> list[dict]:
    """The supported labels for caption writers: label (as in the dataset), check name, caption
    verb, rule, and with a `MotionSet` the clip counts and held-out figures."""
    figures = validate(motion) if motion is not None else {}
    rows = []
    for label, c in CHECKS.items():
        row = {"label": label, "check": c.name, "verb": c.verb, "rule": c.rule}
        if motion is not None:
            clips = motion.indices(content=label)
            row["clips"] = len(clips)
            row["styles"] = sorted({str(motion.styles[i]) for i in clips})
            row["heldout"] = {k: figures[label][k] for k in ("clips", "positive_rate", "false_positive_rate")}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Write the label table (with held-out figures) as JSON: label_checks CACHE.npz OUT.json."""
    import argparse
    import json
    from pathlib import Path

    from .dataset import load_cache

    parser = argparse.ArgumentParser(description="Validate the label checks on the held-out clips "
                                                 "and write the supported labels as JSON")
    parser.add_argument("cache")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    table = {"dataset": "Bandai Namco Research Motion Dataset (CC BY-NC 4.0)",
             "labels": label_table(load_cache(args.cache))}
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    tmp.replace(out)
    for row in table["labels"]:
        h = row["heldout"]
        print(f"{row['label']:22} {row['check']:18} {h['positive_rate']:6.1%} of {h['clips']:3}  "
              f"false positives {h['false_positive_rate']:5.1%}")


if __name__ == "__main__":
    main()
