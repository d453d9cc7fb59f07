"""Process the Bandai Namco clips into one cache: joints, HumanML3D features, labels, split (numpy only).

Per clip: BVH -> forward kinematics -> the 22 HumanML3D joints in metres -> 20 fps ->
features (`joints_to_features`, which canonicalises: floor, origin, facing +Z). The joints
kept are the canonical ones the features decode to, so checks on them see what a decoded
motion would show. All clips go into one `.npz` (concatenated, with offsets), written
atomically:

    names, contents, styles, datasets (N,)  clip stem, labels as in the dataset, 1 or 2
    heldout (N,) bool                       the held-out split (about 10 % of each content)
    offsets (N+1,) int64                    clip i is rows offsets[i]:offsets[i+1]
    joints (R, 22, 3) float32               canonical joints, 20 fps, metres, Y up, facing +Z
    features (R, 263) float32               raw HumanML3D features of the same frames
    fps () float                            20.0

Run: python -m model_backend.train.dataset DATA_DIR OUT.npz [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..motion.features import canonicalize, joints_to_features, resample
from ..rig_math.skeleton import HUMANML3D
from .bandai import Clip, clip_joints, list_clips
from .progress import progress

__all__ = ["MotionSet", "heldout_split", "process_clip", "build_cache", "load_cache"]

HELDOUT_FRACTION = 0.1
MIN_FRAMES = 2 * 4 + 1  # at least two motion tokens at 20 fps


@dataclass
class MotionSet:
    """The processed clips (see the module docstring for the fields)."""

    names: np.ndarray
    contents: np.ndarray
    styles: np.ndarray
    datasets: np.ndarray
    heldout: np.ndarray
    offsets: np.ndarray
    joints: np.ndarray
    features: np.ndarray
    fps: float = HUMANML3D.fps

    def __len__(self) -> int:
        return len(self.names)

    def clip_joints(self, i: int) -> np.ndarray:
        """Canonical joints (T, 22, 3) of clip i."""
        return self.joints[self.offsets[i]:self.offsets[i + 1]]

    def clip_features(self, i: int) -> np.ndarray:
        """Raw features (T, 263) of clip i."""
        return self.features[self.offsets[i]:self.offsets[i + 1]]

    def indices(self, heldout: bool | None = None, content: str | None = None) -> list[int]:
        """Clip indices of one split (None: both) and one content label (None: all)."""
        keep = np.ones(len(self), bool)
        if heldout is not None:
            keep &= self.heldout == heldout
        if content is not None:
            keep &= self.contents == content
        return [int(i) for i in np.flatnonzero(keep)]


def heldout_split(clips: list[Clip], seed: int = 0, fraction: float = HELDOUT_FRACTION) -> set[str]:
    """Names of the held-out clips: per content label, the `fraction` (at least one) whose
    sha256 of `"{seed}:{name}"` sorts first. Depends only on the names and the seed."""
    by_content: dict[str, list[str]] = {}
    for clip in clips:
        by_content.setdefault(clip.content, []).append(clip.name)
    held: set[str] = set()
    for names in by_content.values():
        if len(names) < 2:
            continue  # a single clip stays in training: nothing to learn its label from otherwise
        ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        held.update(ranked[:max(1, round(fraction * len(names)))])
    return held


def process_clip(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One BVH -> (canonical joints (T, 22, 3), features (T, 263)) at 20 fps, float32."""
    joints, fps = clip_joints(path)
    joints = resample(joints, fps, HUMANML3D.fps)
    if len(joints) < MIN_FRAMES:
        raise ValueError(f"{path}: only {len(joints)} frames at 20 fps, need {MIN_FRAMES}")
    features = joints_to_features(joints)
    return canonicalize(joints)[:-1].astype(np.float32), features


def build_cache(data_dir: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                limit: int | None = None, show_progress: bool = True) -> MotionSet:
    """Process every clip under `data_dir` (a clone of the dataset) into `out` (.npz); return it.

    `limit` keeps only the first clips (quick runs). The file is written through a temporary
    file and renamed, so an interrupted run never leaves half a cache.
    """
    clips = list_clips(data_dir)[:limit]
    if not clips:
        raise ValueError(f"no clips found under {data_dir}")
    held = heldout_split(clips, seed)
    joints, features = [], []
    for clip in progress(clips, len(clips), "clips", enabled=show_progress):
        j, f = process_clip(clip.path)
        joints.append(j)
        features.append(f)
    lengths = [len(f) for f in features]
    motion = MotionSet(
        names=np.array([c.name for c in clips]), contents=np.array([c.content for c in clips]),
        styles=np.array([c.style for c in clips]), datasets=np.array([c.dataset for c in clips]),
        heldout=np.array([c.name in held for c in clips]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        joints=np.concatenate(joints), features=np.concatenate(features))
    save_cache(motion, out)
    return motion


def save_cache(motion: MotionSet, out: str | os.PathLike) -> Path:
    """Write a MotionSet as one .npz, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cache-", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez(tmp, **{k: getattr(motion, k) for k in MotionSet.__dataclass_fields__})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_cache(path: str | os.PathLike) -> MotionSet:
    """Read a cache written by `build_cache` (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no motion cache; build it with "
                                "`python -m model_backend.train.dataset DATA_DIR {path}`")
    with np.load(path, allow_pickle=False) as z:
        fields = {k: z[k] for k in MotionSet.__dataclass_fields__}
    fields["fps"] = float(fields["fps"])
    return MotionSet(**fields)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a clone of BandaiNamcoResearchInc/Bandai-Namco-Research-Motiondataset")
    parser.add_argument("out", help="the cache file to write (.npz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--limit", type=int, default=None, help="process only the first N clips")
    args = parser.parse_args(argv)
    motion = build_cache(args.data_dir, args.out, args.seed, args.limit)
    print(f"{len(motion)} clips ({int(motion.heldout.sum())} held out), {len(motion.features)} frames "
          f"at 20 fps -> {args.out}")


if __name__ == "__main__":
    main()
