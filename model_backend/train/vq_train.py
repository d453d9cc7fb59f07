"""Train the demo model's VQ-VAE on the processed clips and write it in the model-folder format.

The network is the project's T2M-GPT `VQVAE` (same module names and file format as the real
one, narrower); only the training is here. The recipe follows T2M-GPT (its windows are 64
frames; here 32, as a third of the clips are shorter): random windows of normalised features,
smooth-L1 reconstruction plus 0.5 x smooth-L1 on the root-relative positions (and, not in
T2M-GPT, 1.0 x on the 4 root channels, whose errors add up along the path), commitment 0.02,
a codebook learnt by exponential moving averages (decay 0.99) with dead codes reset to random
encoder outputs, straight-through gradients. Convolutions run
under bf16 autocast (about twice as fast on a CPU with avx512-bf16); the quantiser and the
weights stay fp32. Deterministic for a seed at a fixed thread count.

Output folder (what a model folder needs from the motion side, docs/model-folder.md):

    vqvae.safetensors   the state dict, original key names
    vqvae.json          the manifest's "vqvae" entry: {"file": ..., width, code_dim, ...}
    mean.npy, std.npy   263 float32 each, from the training split (T2M style: one std per block)
    metrics.json        held-out reconstruction figures and the training settings

Run: python -m model_backend.train.vq_train CACHE.npz OUT_DIR [--steps N] [--tokens tokens.npz]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..rig_math.skeleton import FRAMES_PER_TOKEN, HUMANML3D
from ..vq.codec import MotionCodec
from ..vq.vqvae import VQVAE, load_vqvae, save_vqvae
from .dataset import MotionSet, load_cache
from .progress import progress

MAX_EVAL_FRAMES = 196  # HumanML3D's longest motion (9.8 s, 49 tokens)

__all__ = ["VQSettings", "feature_statistics", "train_vqvae", "save_vq_folder", "load_vq_codec",
           "encode_features", "heldout_mpjpe", "write_tokens"]


@dataclass(frozen=True)
class VQSettings:
    """Everything that decides the trained weights (with the data and the seed)."""

    width: int = 128
    code_dim: int = 128
    num_codes: int = 512        # fixed by the tokenizer layout: <Motion_0..511>
    steps: int = 2600
    batch: int = 128
    window: int = 32            # frames (1.6 s at 20 fps: a third of the clips are under 3.2 s)
    lr: float = 1e-3
    warmup: int = 100
    commit: float = 0.02
    pos_weight: float = 0.5     # extra weight on the root-relative positions
    root_weight: float = 1.0    # extra weight on the root channels (their errors add up along the path)
    ema_decay: float = 0.99
    seed: int = 0
    bf16: bool = True
    balance: bool = True        # weight clips by 1/sqrt(clips of their content): the 13-clip sideways
                                # walks keep their sideways motion through the round trip


def _blocks(num_joints: int = HUMANML3D.num_joints) -> list[slice]:
    """Feature blocks: yaw velocity, root xz velocity, root height, positions, rotations,
    velocities, contacts."""
    edges = [0, 1, 3, 4, 4 + 3 * (num_joints - 1), 4 + 9 * (num_joints - 1), 4 + 9 * (num_joints - 1) + 3 * num_joints]
    edges.append(edges[-1] + 4)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean (263,) and std (263,) float32 as T2M computes them: per-channel mean, and per block
    the mean of the channels' standard deviations (so no channel of a block dominates)."""
    mean = features.mean(axis=0)
    raw = features.std(axis=0)
    std = np.empty_like(raw)
    for block in _blocks():
        std[block] = max(float(raw[block].mean()), 1e-4)
    return mean.astype(np.float32), std.astype(np.float32)


class _EmaCodebook:
    """T2M-GPT's EMA codebook with reset, updating the model's `quantizer.codebook` buffer in place."""

    def __init__(self, codebook: torch.Tensor, decay: float, generator: torch.Generator) -> None:
        self.codebook, self.decay, self.generator = codebook, decay, generator
        self.sum = torch.zeros_like(codebook)
        self.count = torch.zeros(len(codebook))
        self.ready = False

    def _random_rows(self, z: torch.Tensor, n: int) -> torch.Tensor:
        pick = torch.randint(len(z), (n,), generator=self.generator)
        return z[pick]

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> float:
        """One EMA step from encoder outputs z (N, C) and their codes; returns the perplexity."""
        if not self.ready:  # start from encoder outputs, as T2M-GPT does
            self.codebook.copy_(self._random_rows(z, len(self.codebook)))
            self.sum.copy_(self.codebook)
            self.count.fill_(1.0)
            self.ready = True
            return 0.0
        onehot = F.one_hot(idx, len(self.codebook)).float()  # (N, K)
        counts = onehot.sum(0)
        self.sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        self.count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        used = (self.count >= 1.0).float()[:, None]
        fresh = self._random_rows(z, len(self.codebook))
        self.codebook.copy_(used * self.sum / self.count.clamp(min=1e-6)[:, None] + (1 - used) * fresh)
        p = counts / counts.sum()
        return float(torch.exp(-(p * torch.log(p + 1e-7)).sum()))


def _windows(motion: MotionSet, window: int, balance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start rows, lengths and sampling probabilities of the training clips long enough for one
    window: uniform, or with `balance` 1/sqrt(clips of its content), so the dataset's 15-clip
    contents (walk-back, bow, ...) are seen more often than their share."""
    clips = [i for i in motion.indices(heldout=False) if motion.offsets[i + 1] - motion.offsets[i] >= window]
    if not clips:
        raise ValueError(f"no training clip has {window} frames; lower the window")
    starts = motion.offsets[clips]
    lengths = motion.offsets[np.array(clips) + 1] - starts
    contents = motion.contents[clips]
    counts = {c: int(np.sum(contents == c)) for c in set(contents)}
    weights = np.array([1.0 / math.sqrt(counts[c]) if balance else 1.0 for c in contents])
    return starts, lengths, weights / weights.sum()


def _lr(step: int, s: VQSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def train_vqvae(motion: MotionSet, settings: VQSettings = VQSettings(), *, show_progress: bool = True,
                log_every: int = 100) -> tuple[VQVAE, np.ndarray, np.ndarray, dict]:
    """Train on the training split; return (model in eval mode, mean, std, a log of the run)."""
    s = settings
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    train_rows = np.concatenate([np.arange(motion.offsets[i], motion.offsets[i + 1])
                                 for i in motion.indices(heldout=False)])
    mean, std = feature_statistics(motion.features[train_rows])
    norm = ((motion.features - mean) / std).astype(np.float32)
    starts, lengths, weights = _windows(motion, s.window, s.balance)

    model = VQVAE(feature_size=HUMANML3D.feature_size, width=s.width, code_dim=s.code_dim,
                  num_codes=s.num_codes)
    core = model.vqvae
    ema = _EmaCodebook(core.quantizer.codebook, s.ema_decay, gen)
    params = list(core.encoder.parameters()) + list(core.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.99), weight_decay=0.0)
    pos = _blocks()[3]
    log: dict = {"loss": [], "perplexity": []}
    model.train()
    start_time = time.monotonic()
    for step in progress(range(s.steps), s.steps, "vq-vae", enabled=show_progress):
        pick = (rng.choice(len(starts), size=s.batch, p=weights) if s.balance
                else rng.integers(len(starts), size=s.batch))
        offset = (rng.random(s.batch) * (lengths[pick] - s.window + 1)).astype(np.int64)
        rows = (starts[pick] + offset)[:, None] + np.arange(s.window)[None, :]
        x = torch.from_numpy(norm[rows])  # (B, T, F)
        for group in opt.param_groups:
            group["lr"] = _lr(step, s)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            z = core.encoder(x.permute(0, 2, 1))
        z = z.float()
        b, c, n = z.shape
        flat = z.permute(0, 2, 1).reshape(b * n, c)
        idx = core.quantizer.quantize(flat.detach())
        perplexity = ema.update(flat.detach(), idx)
        zq = core.quantizer.dequantize(idx)
        commit = F.mse_loss(flat, zq.detach())
        zq = flat + (zq - flat).detach()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            y = core.decoder(zq.view(b, n, c).permute(0, 2, 1))
        y = y.float().permute(0, 2, 1)
        loss = (F.smooth_l1_loss(y, x) + s.pos_weight * F.smooth_l1_loss(y[..., pos], x[..., pos])
                + s.root_weight * F.smooth_l1_loss(y[..., :4], x[..., :4]) + s.commit * commit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == s.steps - 1:
            log["loss"].append((step, round(loss.item(), 5)))
            log["perplexity"].append((step, round(perplexity, 1)))
    log["seconds"] = round(time.monotonic() - start_time, 1)
    return model.eval(), mean, std, log


# ---------------------------------------------------------------- folder, codec, evaluation

def save_vq_folder(model: VQVAE, mean: np.ndarray, std: np.ndarray, out_dir: str | os.PathLike,
                   metrics: dict | None = None) -> Path:
    """Write the VQ-VAE folder (module docstring) atomically: built aside, then renamed into place."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        save_vqvae(model, work / "vqvae.safetensors")
        np.save(work / "mean.npy", mean.astype(np.float32))
        np.save(work / "std.npy", std.astype(np.float32))
        (work / "vqvae.json").write_text(json.dumps({"file": "vqvae.safetensors", **model.hparams}, indent=2) + "\n")
        (work / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")
        for path in (work, *work.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def load_vq_codec(folder: str | os.PathLike) -> MotionCodec:
    """The project's `MotionCodec` from a VQ-VAE folder written by `save_vq_folder` (or a model folder)."""
    from .folder import vq_hparams

    folder = Path(folder)
    vqvae = load_vqvae(folder / "vqvae.safetensors", **vq_hparams(folder))
    mean = np.load(folder / "mean.npy", allow_pickle=False)
    std = np.load(folder / "std.npy", allow_pickle=False)
    return MotionCodec(vqvae, mean, std, HUMANML3D)


def encode_features(codec: MotionCodec, features: np.ndarray) -> list[int]:
    """Motion tokens of raw features (T, 263): cut to a multiple of 4 frames, normalised, encoded."""
    f = features[:len(features) // FRAMES_PER_TOKEN * FRAMES_PER_TOKEN]
    norm = torch.from_numpy(((f - codec.mean) / codec.std).astype(np.float32))[None]
    with torch.inference_mode():
        return [int(c) for c in codec.vqvae.encode(norm)[0]]


def heldout_mpjpe(codec: MotionCodec, motion: MotionSet, max_frames: int | None = MAX_EVAL_FRAMES) -> dict:
    """Reconstruction error of the held-out clips through the real decode path, in mm.

    Each clip's first `max_frames` frames (None: all; a multiple of 4), normalised, encoded,
    then tokens -> VQ decode -> de-normalise -> features -> joints (`MotionCodec.decode`),
    against the clip's own joints over the same frames. "global_mm" compares positions as
    recovered (root drift included); "root_relative_mm" subtracts each frame's pelvis first.
    """
    errors, relative = [], []
    for i in motion.indices(heldout=True):
        features = motion.clip_features(i)[:max_frames]
        decoded = codec.decode(encode_features(codec, features)).joints
        truth = motion.clip_joints(i)[:len(decoded)]
        errors.append(np.linalg.norm(decoded - truth, axis=-1).mean())
        relative.append(np.linalg.norm((decoded - decoded[:, :1]) - (truth - truth[:, :1]), axis=-1).mean())
    return {"clips": len(errors), "max_frames": max_frames, "global_mm": round(1000 * float(np.mean(errors)), 1),
            "global_median_mm": round(1000 * float(np.median(errors)), 1),
            "root_relative_mm": round(1000 * float(np.mean(relative)), 1)}


def write_tokens(path: str | os.PathLike, motion: MotionSet, tokens: list[list[int]]) -> Path:
    """Every clip's motion tokens with its labels and split, as one .npz (atomically).

    Keys: tokens (M,) int16 concatenated, offsets (N+1,) int64 (clip i is
    tokens[offsets[i]:offsets[i+1]]), names, contents, styles (N,) str, datasets (N,) int,
    heldout (N,) bool, frames_per_token () int (4), fps () float (20).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, tokens=np.concatenate([np.asarray(t, np.int16) for t in tokens]),
                 offsets=np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64),
                 names=motion.names, contents=motion.contents, styles=motion.styles,
                 datasets=motion.datasets, heldout=motion.heldout,
                 frames_per_token=np.int64(FRAMES_PER_TOKEN), fps=np.float64(motion.fps))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="the motion cache from model_backend.train.dataset")
    parser.add_argument("out_dir", help="the VQ-VAE folder to write")
    parser.add_argument("--tokens", help="also write every clip's tokens to this .npz")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2; results depend on it)")
    for field, value in asdict(VQSettings()).items():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = VQSettings(**{f: getattr(args, f) for f in asdict(VQSettings())})
    motion = load_cache(args.cache)
    model, mean, std, log = train_vqvae(motion, settings)
    codec = MotionCodec(model, mean, std, HUMANML3D)
    figures = {"first_196_frames": heldout_mpjpe(codec, motion), "whole_clips": heldout_mpjpe(codec, motion, None)}
    metrics = {"heldout": figures, "settings": asdict(settings), "threads": args.threads, "log": log}
    save_vq_folder(model, mean, std, args.out_dir, metrics)
    if args.tokens:
        tokens = [encode_features(codec, motion.clip_features(i)) for i in range(len(motion))]
        write_tokens(args.tokens, motion, tokens)
    print(json.dumps({"heldout": figures, "train_seconds": log["seconds"]}))


if __name__ == "__main__":
    main()
