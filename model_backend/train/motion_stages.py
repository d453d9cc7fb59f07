"""The motion stages of `python -m model_backend.train all`, run through their own command lines.

1. `model_backend.train.dataset DATA CACHE`: BVH clips -> HumanML3D joints and features, split.
2. `model_backend.train.vq_train CACHE VQ_DIR --tokens TOKENS`: the VQ-VAE, then every clip's tokens.

Each stage draws its own progress bar; a stage whose output exists is not run again
(delete the work folder to start over).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["run"]


def run(data: str | Path, work: str | Path, *, seed: int = 0, threads: int = 2) -> tuple[Path, Path]:
    """Run the motion stages into `work`; return (tokens.npz, the VQ-VAE folder)."""
    from . import dataset, vq_train

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    cache, vq_dir, tokens = work / "bandai.npz", work / "vq", work / "tokens.npz"
    if not cache.is_file():
        dataset.main([str(data), str(cache), "--seed", str(seed)])
    if not (tokens.is_file() and (vq_dir / "vqvae.safetensors").is_file()):
        vq_train.main([str(cache), str(vq_dir), "--tokens", str(tokens), "--threads", str(threads),
                       "--seed", str(seed)])
    return tokens, vq_dir
