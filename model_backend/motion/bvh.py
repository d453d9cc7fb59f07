"""BVH export of solved rotations, and a reader with forward kinematics (numpy only).

File conventions:
- Y up, facing +Z, metres (HumanML3D axes), which is BVH's usual frame.
- Joint names follow the common SMPL/Mixamo-style BVH naming (`BVH_NAMES`:
  Hips, LeftUpLeg, ..., RightHand), so importers and rig presets recognise them.
- OFFSETs are the rest pose of the `SolvedMotion` (the solver's T-pose with the
  clip's own bone lengths, unless the caller solved with another rest); the
  root's OFFSET is its rest position (the rest hip height above the floor) and
  its position channels are absolute.
- Rotation channels are "Zrotation Xrotation Yrotation" in degrees: the local
  rotation is Rz(z) @ Rx(x) @ Ry(y) (the order the channels are listed in),
  unwrapped over time. Each joint's rotation turns its children's offsets.
- Leaves (head, hands, toes) end in an End Site continuing their bone by half
  its length.
- Foot locking is the caller's choice: run `footlock.lock_feet` on the joints
  before `solver.solve`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..rig_math.quat import quat_to_matrix
from ..rig_math.rootmotion import rest_hip_height
from ..rig_math.skeleton import HUMANML3D, Skeleton

__all__ = ["BVH_NAMES", "write_bvh", "read_bvh", "BvhData", "bvh_positions", "euler_zxy_from_matrix"]

BVH_NAMES = {
    "pelvis": "Hips", "left_hip": "LeftUpLeg", "right_hip": "RightUpLeg", "spine1": "Spine",
    "left_knee": "LeftLeg", "right_knee": "RightLeg", "spine2": "Spine1", "left_ankle": "LeftFoot",
    "right_ankle": "RightFoot", "spine3": "Spine2", "left_foot": "LeftToe", "right_foot": "RightToe",
    "neck": "Neck", "left_collar": "LeftShoulder", "right_collar": "RightShoulder", "head": "Head",
    "left_shoulder": "LeftArm", "right_shoulder": "RightArm", "left_elbow": "LeftForeArm",
    "right_elbow": "RightForeArm", "left_wrist": "LeftHand", "right_wrist": "RightHand",
}
_ROT_CHANNELS = ("Zrotation", "Xrotation", "Yrotation")


# ---------------------------------------------------------------- Euler angles

def euler_zxy_from_matrix(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> angles (..., 3) in radians as (z, x, y) with m = Rz(z) Rx(x) Ry(y).

    x is in [-pi/2, pi/2]; at gimbal lock (|x| = pi/2) y is set to 0.
    """
    m = np.asarray(m, dtype=np.float64)
    x = np.arcsin(np.clip(m[..., 2, 1], -1.0, 1.0))
    locked = np.abs(m[..., 2, 1]) > 1.0 - 1e-10
    z = np.where(locked, np.arctan2(m[..., 1, 0], m[..., 0, 0]), np.arctan2(-m[..., 0, 1], m[..., 1, 1]))
    y = np.where(locked, 0.0, np.arctan2(-m[..., 2, 0], m[..., 2, 2]))
    return np.stack([z, x, y], axis=-1)


def _axis_matrix(axis: str, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(c), np.zeros_like(c)
    rows = {
        "X": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "Y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "Z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


# ---------------------------------------------------------------- writing

def _dfs(parents: tuple[int, ...]) -> list[int]:
    order, stack = [], [0]
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(reversed([c for c, p in enumerate(parents) if p == j]))
    return order


def _hierarchy(names: list[str], parents: tuple[int, ...], offsets: np.ndarray, root_offset: np.ndarray) -> str:
    lines: list[str] = []

    def emit(j: int, depth: int) -> None:
        pad = "\t" * depth
        kids = [c for c, p in enumerate(parents) if p == j]
        off = root_offset if parents[j] < 0 else offsets[j]
        lines.append(f"{pad}{'ROOT' if parents[j] < 0 else 'JOINT'} {names[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}\tOFFSET {off[0]:.6f} {off[1]:.6f} {off[2]:.6f}")
        if parents[j] < 0:
            lines.append(f"{pad}\tCHANNELS 6 Xposition Yposition Zposition {' '.join(_ROT_CHANNELS)}")
        else:
            lines.append(f"{pad}\tCHANNELS 3 {' '.join(_ROT_CHANNELS)}")
        for c in kids:
            emit(c, depth + 1)
        if not kids:
            end = 0.5 * offsets[j] if parents[j] >= 0 else np.array([0.0, 0.1, 0.0])
            lines.append(f"{pad}\tEnd Site")
            lines.append(f"{pad}\t{{")
            lines.append(f"{pad}\t\tOFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}")
            lines.append(f"{pad}\t}}")
        lines.append(f"{pad}}}")

    emit(0, 0)
    return "\n".join(lines)


def write_bvh(path: str | os.PathLike, motion, fps: float, skeleton: Skeleton = HUMANML3D,
              names: dict[str, str] | None = None) -> Path:
    """Write a solved motion (`solver.SolvedMotion` or anything with local_quats (T, J, 4),
    root_pos (T, 3), rest_offsets (J, 3)) as a BVH file; returns the path.

    Validates everything first and writes through a temporary file, so bad
    input never leaves a partial file. `names` maps the skeleton's joint names
    to BVH names (default `BVH_NAMES`, else the skeleton's own names).
    """
    quats = np.asarray(motion.local_quats, dtype=np.float64)
    root = np.asarray(motion.root_pos, dtype=np.float64)
    offsets = np.asarray(motion.rest_offsets, dtype=np.float64)
    n = skeleton.num_joints
    if quats.ndim != 3 or quats.shape[1:] != (n, 4) or len(quats) < 1:
        raise ValueError(f"local_quats must have shape (frames, {n}, 4), got {quats.shape}")
    if root.shape != (len(quats), 3) or offsets.shape != (n, 3):
        raise ValueError(f"root_pos must be ({len(quats)}, 3) and rest_offsets ({n}, 3), "
                         f"got {root.shape} and {offsets.shape}")
    if not (np.all(np.isfinite(quats)) and np.all(np.isfinite(root)) and np.all(np.isfinite(offsets))):
        raise ValueError("the motion contains NaN or infinite values; solve it again from clean joints")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    table = names if names is not None else (BVH_NAMES if skeleton.name == HUMANML3D.name else {})
    bvh_names = [table.get(name, name) for name in skeleton.joint_names]
    if len(set(bvh_names)) != n or any(not s or any(ch.isspace() for ch in s) for s in bvh_names):
        raise ValueError("BVH joint names must be unique and contain no spaces")

    root_offset = np.array([0.0, rest_hip_height(offsets, skeleton), 0.0])  # rest hips above the floor
    angles = np.degrees(np.unwrap(euler_zxy_from_matrix(quat_to_matrix(quats)), axis=0))  # (T, J, 3)
    order = _dfs(skeleton.parents)
    values = np.concatenate([root, angles[:, order].reshape(len(quats), -1)], axis=1)

    text = ["HIERARCHY", _hierarchy(bvh_names, skeleton.parents, offsets, root_offset), "MOTION",
            f"Frames: {len(quats)}", f"Frame Time: {1.0 / fps:.8f}"]
    body = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in values)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".bvh-", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join(text) + "\n" + body + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class BvhData:
    """A parsed BVH: joints in file order (End Sites excluded)."""

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray  # (J, 3)
    channels: tuple[tuple[str, ...], ...]  # per joint, as listed
    frame_time: float
    values: np.ndarray  # (T, total channels) in file order

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time


def read_bvh(path: str | os.PathLike) -> BvhData:
    """Parse a BVH file's hierarchy and motion (minimal: enough for tests and simple tools)."""
    tokens = Path(path).read_text(encoding="utf-8", errors="replace").split()
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    stack: list[int] = []
    i, in_end = 0, 0
    try:
        while tokens[i] != "MOTION":
            tok = tokens[i]
            if tok in ("ROOT", "JOINT"):
                names.append(tokens[i + 1])
                parents.append(stack[-1] if stack else -1)
                offsets.append([0.0, 0.0, 0.0])
                channels.append(())
                i += 2
            elif tok == "End":
                in_end += 1
                i += 2
            elif tok == "{":
                if not in_end:
                    stack.append(len(names) - 1)
                i += 1
            elif tok == "}":
                if in_end:
                    in_end -= 1
                else:
                    stack.pop()
                i += 1
            elif tok == "OFFSET":
                if not in_end:
                    offsets[-1] = [float(t) for t in tokens[i + 1:i + 4]]
                i += 4
            elif tok == "CHANNELS":
                k = int(tokens[i + 1])
                channels[-1] = tuple(tokens[i + 2:i + 2 + k])
                i += 2 + k
            else:
                i += 1
        frames = int(tokens[tokens.index("Frames:", i) + 1])
        t = tokens.index("Time:", i)
        frame_time = float(tokens[t + 1])
        count = sum(len(c) for c in channels)
        values = np.array(tokens[t + 2:t + 2 + frames * count], dtype=np.float64).reshape(frames, count)
    except (IndexError, ValueError) as err:
        raise ValueError(f"{path} is not a valid BVH file ({err}); export it again") from None
    return BvhData(tuple(names), tuple(parents), np.array(offsets), tuple(channels), frame_time, values)


def bvh_positions(data: BvhData) -> np.ndarray:
    """Joint positions (T, J, 3) of a parsed BVH by forward kinematics, in the file's axes and units.

    A joint's position channels, where it has them, are its translation from its parent (the
    root's: its position), replacing the OFFSET on the axes they name; files that give every
    joint position channels (the Bandai Namco dataset) repeat the offset there.
    """
    t = len(data.values)
    world_rot = np.empty((t, len(data.names), 3, 3))
    pos = np.empty((t, len(data.names), 3))
    col = 0
    for j, (p, chans) in enumerate(zip(data.parents, data.channels)):
        local = np.broadcast_to(np.eye(3), (t, 3, 3)).copy()
        trans = np.broadcast_to(data.offsets[j], (t, 3)).copy()
        for k, name in enumerate(chans):
            v = data.values[:, col + k]
            if name.endswith("position"):
                trans[:, "XYZ".index(name[0])] = v
            elif name.endswith("rotation"):
                local = local @ _axis_matrix(name[0], np.radians(v))
        col += len(chans)
        if p < 0:
            pos[:, j], world_rot[:, j] = trans, local
        else:
            pos[:, j] = pos[:, p] + np.einsum("tij,tj->ti", world_rot[:, p], trans)
            world_rot[:, j] = world_rot[:, p] @ local
    return pos
