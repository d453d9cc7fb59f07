"""Motion tokens <-> motion: the VQ-VAE, the feature statistics and the skeleton together.

Decoding: codebook indices -> VQ-VAE decoder -> de-normalised features ->
HumanML3D recovery -> joints (dataset axes and units) and Blender joints (metres,
Z up, facing -Y). Encoding goes the other way from Blender joints. Everything is
float32 and runs under `torch.inference_mode()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..wire.limits import check_joints_size
from ..wire.manifest import FIX_HINT, VQVAE_KEYS, ModelFolderError, folder_error, inside, read_manifest
from ..motion.features import contacts_from_features, features_to_joints, joints_to_features, resample
from ..rig_math.skeleton import FRAMES_PER_TOKEN, Skeleton, from_blender, skeleton_for, to_blender
from .vqvae import VQVAE, load_vqvae

__all__ = ["DecodedMotion", "MotionCodec"]


@dataclass
class DecodedMotion:
    """One decoded motion; T = 4 * len(tokens) frames at `fps`."""

    tokens: list[int]
    features: np.ndarray        # (T, F) float32, raw (de-normalised)
    joints: np.ndarray          # (T, J, 3) float32, dataset axes (Y up, facing +Z) and units
    joints_blender: np.ndarray  # (T, J, 3) float32, metres, Blender axes (Z up, facing -Y)
    contacts: np.ndarray        # (T, 4) float32 in 0..1, order of Skeleton.foot_joints
    fps: float


class MotionCodec:
    """A VQ-VAE with its feature mean/std and skeleton: tokens <-> motion."""

    def __init__(self, vqvae: VQVAE, mean: np.ndarray, std: np.ndarray, skeleton: Skeleton,
                 device: str | torch.device = "cpu") -> None:
        size = vqvae.hparams["feature_size"]
        if size != skeleton.feature_size or mean.shape != (size,) or std.shape != (size,):
            raise ValueError(f"feature sizes differ: VQ-VAE {size}, {skeleton.name} {skeleton.feature_size}, "
                             f"mean {mean.shape}, std {std.shape}")
        self.device = torch.device(device)
        self.vqvae = vqvae.float().eval().to(self.device)
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.skeleton = skeleton

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> "MotionCodec":
        """Load from a model folder (docs/model-folder.md): manifest.json, the VQ-VAE file, mean.npy, std.npy."""
        folder = Path(model_dir).expanduser()
        manifest = read_manifest(folder, check_files=False)
        skeleton = skeleton_for(manifest["dataset"])
        hparams = {k: manifest["vqvae"][k] for k in VQVAE_KEYS if k != "file"}
        vq_path = inside(folder, manifest["vqvae"]["file"])
        if not vq_path.is_file():
            raise folder_error(folder, f"{manifest['vqvae']['file']} is missing")
        vqvae = load_vqvae(vq_path, **hparams)
        mean = _load_stat(folder / "mean.npy", skeleton.feature_size, positive=False)
        std = _load_stat(folder / "std.npy", skeleton.feature_size, positive=True)
        return cls(vqvae, mean, std, skeleton, device)

    @property
    def fps(self) -> float:
        return self.skeleton.fps

    @property
    def num_codes(self) -> int:
        return self.vqvae.hparams["num_codes"]

    # ------------------------------------------------------------ decode

    def decode(self, tokens: Sequence[int]) -> DecodedMotion:
        """Codebook indices -> a motion of 4 frames per token."""
        return self.decode_batch([tokens])[0]

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[DecodedMotion]:
        """Several token lists in one forward pass (right-padded, masked so each equals its single decode)."""
        if len(batch) == 0:
            raise ValueError("decode_batch needs at least one token list")
        lists = [self._check_tokens(t) for t in batch]
        longest = max(len(t) for t in lists)
        padded = torch.zeros(len(lists), longest, dtype=torch.long)
        for row, toks in enumerate(lists):
            padded[row, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        lengths = torch.tensor([len(t) for t in lists], dtype=torch.long)
        with torch.inference_mode():
            out = self.vqvae.decode(padded.to(self.device), lengths.to(self.device))
        norm = out.float().cpu().numpy()
        return [self._motion(toks, norm[row, :len(toks) * FRAMES_PER_TOKEN]) for row, toks in enumerate(lists)]

    def decode_partial(self, tokens: Sequence[int]) -> tuple[DecodedMotion, int]:
        """Decode a span still arriving; also return how many leading frames later tokens cannot change."""
        motion = self.decode(tokens)
        return motion, self.vqvae.stable_frames(len(motion.tokens))

    def _check_tokens(self, tokens: Sequence[int]) -> list[int]:
        toks = list(tokens)
        if not toks:
            raise ValueError("no motion tokens to decode: a motion needs at least one token")
        if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in toks):
            raise ValueError("motion tokens must be integer codebook indices")
        bad = [int(t) for t in toks if not 0 <= t < self.num_codes]
        if bad:
            raise ValueError(f"motion token indices must be in 0..{self.num_codes - 1}; got {bad[:5]}")
        return [int(t) for t in toks]

    def _motion(self, tokens: list[int], norm: np.ndarray) -> DecodedMotion:
        features = (norm * self.std + self.mean).astype(np.float32)
        joints = features_to_joints(features, self.skeleton)
        return DecodedMotion(
            tokens=tokens, features=features, joints=joints,
            joints_blender=to_blender(joints * self.skeleton.metres_per_unit).astype(np.float32),
            contacts=contacts_from_features(features, self.skeleton), fps=self.fps,
        )

    # ------------------------------------------------------------ encode

    def encode_joints(self, joints_blender: np.ndarray, fps: float) -> list[int]:
        """Joints (T, J, 3) in metres and Blender axes at `fps` -> codebook indices.

        The motion is resampled to the dataset rate; N = max(1, round((T'-1) / 4))
        tokens cover its T' frames. Features need one frame more than they have
        rows, so the clip is cut to 4N + 1 frames, or extended by holding its last
        pose (at most 2 frames either way, 0.1 s at 20 fps). The features are
        canonical (floor, origin and facing of the first frame), so the tokens
        carry no world placement.
        """
        j = np.asarray(joints_blender, dtype=np.float64)
        n = self.skeleton.num_joints
        if j.ndim != 3 or j.shape[1:] != (n, 3) or j.shape[0] < 1:
            raise ValueError(f"joints must have shape (frames, {n}, 3) for {self.skeleton.name}, got {j.shape}")
        if not np.all(np.isfinite(j)):
            raise ValueError("joints contain NaN or infinite values")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps}")
        check_joints_size(len(j), float(fps), self.fps)  # LimitError (a ValueError) before resampling
        j = resample(from_blender(j) / self.skeleton.metres_per_unit, float(fps), self.fps)
        num_tokens = max(1, int(round((len(j) - 1) / FRAMES_PER_TOKEN)))
        frames = num_tokens * FRAMES_PER_TOKEN + 1
        if len(j) < frames:
            j = np.concatenate([j, np.repeat(j[-1:], frames - len(j), axis=0)])
        features = joints_to_features(j[:frames], self.skeleton)
        norm = (features - self.mean) / self.std
        with torch.inference_mode():
            codes = self.vqvae.encode(torch.from_numpy(norm[None].astype(np.float32)).to(self.device))
        return [int(c) for c in codes[0].cpu()]


def _load_stat(path: Path, size: int, positive: bool) -> np.ndarray:
    """mean.npy / std.npy as float32 (size,), checked: finite, and > 0 for the std."""
    if not path.is_file():
        raise folder_error(path.parent, f"{path.name} is missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ModelFolderError(f"{path}: not a readable .npy array ({exc}); {FIX_HINT}") from None
    if arr.shape != (size,):
        raise ModelFolderError(f"{path}: holds shape {arr.shape} but the model's features have {size} "
                               f"values; {FIX_HINT}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise ModelFolderError(f"{path}: values must be finite{' and positive' if positive else ''}; {FIX_HINT}")
    return arr
