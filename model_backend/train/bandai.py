"""The Bandai Namco Research Motion Dataset: clips, labels and the joint map to HumanML3D (numpy only).

Source: github.com/BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset (CC BY-NC 4.0;
Kobayashi et al. 2023, arXiv 2306.08861). Two datasets, each a folder
`dataset/Bandai-Namco-Research-Motiondataset-{1,2}` with `cfg/content_label.txt`,
`cfg/style_label.txt` (one `dataset-N_{name}` per line) and `data/` holding
`dataset-N_{content}_{style}_{id}.bvh` next to a `.json` of 0-based indices into those
files (`{"content": 6, "style": 11}`).

The BVH files are 30 fps, centimetres, Y up, the actor facing +Z with the left side at +X
(the HumanML3D axes), 21 joints (`joint_Root`, Hips, Spine, Chest, Neck, Head, Shoulder_L,
UpperArm_L, LowerArm_L, Hand_L, ..., UpperLeg_L, LowerLeg_L, Foot_L, Toes_L, ...), every
joint with position and rotation channels.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..motion.bvh import bvh_positions, read_bvh
from ..rig_math.skeleton import HUMANML3D

__all__ = ["Clip", "list_clips", "to_humanml3d", "clip_joints", "BANDAI_DIRECT", "SPINE_FRACTIONS",
           "METRES_PER_UNIT"]

DATASETS = ("Bandai-Namco-Research-Motiondataset-1", "Bandai-Namco-Research-Motiondataset-2")
METRES_PER_UNIT = 0.01  # the files are in centimetres

# HumanML3D joints that have a Bandai joint at the same place.
BANDAI_DIRECT = {
    "pelvis": "Hips", "left_hip": "UpperLeg_L", "right_hip": "UpperLeg_R",
    "left_knee": "LowerLeg_L", "right_knee": "LowerLeg_R", "left_ankle": "Foot_L", "right_ankle": "Foot_R",
    "left_foot": "Toes_L", "right_foot": "Toes_R", "neck": "Neck", "head": "Head",
    "left_collar": "Shoulder_L", "right_collar": "Shoulder_R", "left_shoulder": "UpperArm_L",
    "right_shoulder": "UpperArm_R", "left_elbow": "LowerArm_L", "right_elbow": "LowerArm_R",
    "left_wrist": "Hand_L", "right_wrist": "Hand_R",
}
# The rig has three spine segments (Hips-Spine-Chest-Neck) where HumanML3D has four
# (pelvis-spine1-spine2-spine3-neck): spine1..3 sit at these fractions of the arc length from
# Hips to Neck, the fractions of HumanML3D's own clip 012314 (0.239, 0.498, 0.602).
SPINE_CHAIN = ("Hips", "Spine", "Chest", "Neck")
SPINE_FRACTIONS = {"spine1": 0.24, "spine2": 0.50, "spine3": 0.60}


@dataclass(frozen=True)
class Clip:
    """One motion clip of the dataset and its labels (names exactly as in the dataset's files)."""

    name: str      # file stem, e.g. "dataset-2_walk_normal_001"
    path: Path     # the .bvh file
    dataset: int   # 1 or 2
    content: str   # e.g. "walk-turn-left"
    style: str     # e.g. "elderly"


def _label_names(folder: Path, kind: str) -> list[str]:
    """`cfg/{kind}_label.txt` without the `dataset-N_` prefix, in file order (the json's indices)."""
    path = folder / "cfg" / f"{kind}_label.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point DATA at a full clone of the Bandai Namco dataset")
    return [line.strip().split("_", 1)[1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def list_clips(root: str | os.PathLike) -> list[Clip]:
    """Every clip with a readable BVH and json under a clone of the dataset repository, sorted by name.

    Labels come from the json's indices into the cfg files and must agree with the file name;
    a clip whose BVH is missing (e.g. a Git LFS object that was not fetched) is skipped.
    """
    root = Path(root).expanduser()
    clips: list[Clip] = []
    for number, sub in enumerate(DATASETS, start=1):
        folder = root / "dataset" / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: DATA must be a clone of "
                                    "BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset")
        contents, styles = _label_names(folder, "content"), _label_names(folder, "style")
        for meta in sorted((folder / "data").glob("*.json")):
            bvh = meta.with_suffix(".bvh")
            if not bvh.is_file() or bvh.stat().st_size < 200:
                continue
            index = json.loads(meta.read_text(encoding="utf-8"))
            try:
                content, style = contents[index["content"]], styles[index["style"]]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{meta}: {index} does not index the cfg label files "
                                 f"({len(contents)} contents, {len(styles)} styles)") from None
            if not meta.stem.startswith(f"dataset-{number}_{content}_{style}_"):
                raise ValueError(f"{meta}: labels {content!r}/{style!r} disagree with the file name")
            clips.append(Clip(meta.stem, bvh, number, content, style))
    return clips


def _along_chain(points: np.ndarray, fraction: float) -> np.ndarray:
    """The point at `fraction` of the arc length of a polyline (T, K, 3), per frame."""
    seg = np.linalg.norm(np.diff(points, axis=1), axis=-1)  # (T, K-1)
    cum = np.concatenate([np.zeros((len(points), 1)), np.cumsum(seg, axis=1)], axis=1)
    target = fraction * cum[:, -1:]
    k = np.clip((cum[:, 1:] < target).sum(axis=1), 0, seg.shape[1] - 1)  # segment index per frame
    rows = np.arange(len(points))
    w = (target[:, 0] - cum[rows, k]) / np.maximum(seg[rows, k], 1e-9)
    return points[rows, k] + w[:, None] * (points[rows, k + 1] - points[rows, k])


def to_humanml3d(positions: np.ndarray, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Bandai joint positions (T, J, 3) with their names -> the 22 HumanML3D joints (T, 22, 3).

    Same axes and units as the input; spine1..3 interpolated along the Hips-Neck chain.
    """
    missing = [b for b in list(BANDAI_DIRECT.values()) + list(SPINE_CHAIN) if b not in names]
    if missing:
        raise ValueError(f"not a Bandai Namco skeleton: joints {', '.join(missing)} are missing")
    index = {name: i for i, name in enumerate(names)}
    chain = positions[:, [index[b] for b in SPINE_CHAIN]]
    out = np.empty((len(positions), HUMANML3D.num_joints, 3))
    for j, joint in enumerate(HUMANML3D.joint_names):
        if joint in BANDAI_DIRECT:
            out[:, j] = positions[:, index[BANDAI_DIRECT[joint]]]
        else:
            out[:, j] = _along_chain(chain, SPINE_FRACTIONS[joint])
    return out


def clip_joints(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """A Bandai BVH file -> (HumanML3D joints (T, 22, 3) in metres, Y up, facing +Z; its fps)."""
    data = read_bvh(path)
    joints = to_humanml3d(bvh_positions(data), data.names) * METRES_PER_UNIT
    return joints, data.fps
