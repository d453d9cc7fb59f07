"""Skeletons as data: joint names, parents and dataset facts (numpy only).

Everything that differs between HumanML3D (22 joints, 263 features, 20 fps,
metres) and KIT-ML (21 joints, 251 features, 12.5 fps, millimetres) lives here,
so the feature recovery, the rotation solver and the rig code never hard-code
a joint index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """One dataset's skeleton and feature facts."""

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    fps: float
    feature_size: int
    metres_per_unit: float
    # (left ankle, left toe, right ankle, right toe): the order of the 4 contact channels.
    foot_joints: tuple[int, int, int, int]
    # (right hip, left hip, right shoulder, left shoulder): used to find the facing.
    face_joints: tuple[int, int, int, int]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def index(self, name: str) -> int:
        """Index of a joint by name (ValueError naming the known joints if absent)."""
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise ValueError(f"{self.name} has no joint {name!r}; joints: {', '.join(self.joint_names)}") from None

    def children(self, joint: int) -> list[int]:
        """Direct children of a joint, in index order."""
        return [j for j, p in enumerate(self.parents) if p == joint]


HUMANML3D = Skeleton(
    name="HumanML3D",
    joint_names=(
        "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee",
        "spine2", "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot",
        "neck", "left_collar", "right_collar", "head", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    ),
    parents=(-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19),
    fps=20.0,
    feature_size=263,
    metres_per_unit=1.0,
    foot_joints=(7, 10, 8, 11),
    face_joints=(2, 1, 17, 16),
)

# KIT-ML as HumanML3D's processing scripts define it. Their labels are not
# consistent (the chain 11..15 is called the right hip in the facing indices and
# the left foot in the contact indices); the indices below are theirs, verbatim:
# contacts are written left first with fid_l = [19, 20].
KIT_ML = Skeleton(
    name="KIT-ML",
    joint_names=(
        "root", "torso_lower", "torso_upper", "neck", "head", "left_shoulder",
        "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
        "left_hip", "left_knee", "left_ankle", "left_ball", "left_toe",
        "right_hip", "right_knee", "right_ankle", "right_ball", "right_toe",
    ),
    parents=(-1, 0, 1, 2, 3, 3, 5, 6, 3, 8, 9, 0, 11, 12, 13, 14, 0, 16, 17, 18, 19),
    fps=12.5,
    feature_size=251,
    metres_per_unit=0.001,
    foot_joints=(19, 20, 14, 15),
    face_joints=(11, 16, 5, 8),
)

SKELETONS = {"humanml3d": HUMANML3D, "kit": KIT_ML}

FRAMES_PER_TOKEN = 4  # the VQ-VAE downsamples time by 4


def skeleton_for(dataset: str) -> Skeleton:
    """The skeleton of a dataset name ('HumanML3D', 'humanml3d', 'KIT-ML', 'kit')."""
    key = dataset.lower().replace("-", "").replace("_", "")
    key = {"humanml3d": "humanml3d", "t2m": "humanml3d", "kitml": "kit", "kit": "kit"}.get(key, key)
    if key not in SKELETONS:
        raise ValueError(f"unknown dataset {dataset!r}: use HumanML3D or KIT-ML")
    return SKELETONS[key]


def to_blender(points: np.ndarray) -> np.ndarray:
    """HumanML3D axes (Y up, facing +Z) to Blender axes (Z up, facing -Y): (x, y, z) -> (x, -z, y)."""
    p = np.asarray(points)
    return np.stack([p[..., 0], -p[..., 2], p[..., 1]], axis=-1)


def from_blender(points: np.ndarray) -> np.ndarray:
    """Blender axes back to HumanML3D axes: (x, y, z) -> (x, z, -y)."""
    p = np.asarray(points)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def check_finite(name: str, arr: np.ndarray) -> None:
    """ValueError counting the NaN/infinite values of `arr`, if any."""
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite values; clean the input first")


def as_joints(joints: np.ndarray, skeleton: Skeleton, min_frames: int = 1) -> np.ndarray:
    """Joint positions as float64 (T, J, 3) for `skeleton`, with T >= min_frames and all finite."""
    j = np.asarray(joints, dtype=np.float64)
    if j.ndim != 3 or j.shape[1:] != (skeleton.num_joints, 3) or j.shape[0] < min_frames:
        raise ValueError(f"{skeleton.name} joints must have shape (frames >= {min_frames}, "
                         f"{skeleton.num_joints}, 3), got {np.shape(joints)}")
    check_finite("joints", j)
    return j
