"""Write the demo model's folder in the real model-folder format (docs/model-folder.md).

The folder holds the trained LLM (bf16 safetensors, a standard `from_pretrained` folder
with the tokenizer), the VQ-VAE and mean/std of the motion stage, `manifest.json`, and
`heldout_prompts.json` (label -> caption wordings never used in training, for the
benchmarks), a LICENSE (CC BY-NC 4.0, crediting the dataset) and a README model card. The manifest's `vocabulary` lists the content labels and styles the model
knows and the words that name each label, so the engine can tell a user when a prompt
names none of them. No `created_at`: the same seed and data give the same folder.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..wire.manifest import FORMAT, FORMAT_VERSION, VQVAE_KEYS, created_by, make_readable, write_manifest
from ..rig_math.skeleton import HUMANML3D
from ..llm.vocab import MotionVocab
from . import captions as C
from .card import DATASET_URL, license_text, model_card

__all__ = ["write_model_folder", "vq_hparams", "vocabulary_entry", "HELDOUT_FILE", "DATASET_URL"]

HELDOUT_FILE = "heldout_prompts.json"
COMMAND = "train-demo"   # the manifest's created_by ends with it
VQ_FILES = ("vqvae.safetensors", "mean.npy", "std.npy")


def vq_hparams(vq_dir: Path) -> dict[str, int]:
    """The VQ-VAE's constructor arguments, from the motion stage's `vqvae.json` (or a model folder's manifest)."""
    for name, key in (("vqvae.json", None), ("manifest.json", "vqvae")):
        if (vq_dir / name).is_file():
            entry = json.loads((vq_dir / name).read_text(encoding="utf-8"))
            entry = entry.get(key, {}) if key else entry
            if all(k in entry for k in VQVAE_KEYS if k != "file"):
                return {k: int(entry[k]) for k in VQVAE_KEYS if k != "file"}
    raise FileNotFoundError(f"{vq_dir} has no vqvae.json with the VQ-VAE's settings ({', '.join(VQVAE_KEYS[1:])}): "
                            "write it with the VQ-VAE stage (model_backend.train.vq_train)")


def _vq_metrics(vq_dir: Path) -> dict[str, Any] | None:
    """The VQ-VAE stage's metrics.json (held-out reconstruction, settings), when it wrote one."""
    path = vq_dir / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def vocabulary_entry(contents: Sequence[str], styles: Sequence[str]) -> dict[str, Any]:
    """The manifest's `vocabulary`: label -> the words that name it, the styles, and how to read it."""
    return {"labels": {c: C.keywords(c) for c in contents},
            "styles": list(styles),
            "note": "trained only on these content labels (Bandai Namco Research Motion Dataset); a prompt "
                    "naming none of them gets a motion of the nearest label it knows, or noise"}


def write_model_folder(out_dir: str | Path, *, llm: Any, generation: Any, tokenizer: Any, vq_dir: str | Path,
                       contents: Sequence[str], styles: Sequence[str], heldout: dict[str, list[str]],
                       training: dict[str, Any], seed: int, name: str = "irg-tiny") -> Path:
    """Write the complete folder to `out_dir` (built aside and renamed into place); return its path."""
    import torch

    from ..convert.fixture import check_replaceable, save_llm, swap_into_place

    out_dir = Path(out_dir).expanduser().absolute()
    check_replaceable(out_dir, lambda m: str(m.get("created_by", "")).endswith(COMMAND), "a demo model folder",
                      "python -m model_backend.train")
    vq_dir = Path(vq_dir)
    missing = [f for f in VQ_FILES if not (vq_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{vq_dir} lacks {', '.join(missing)}: run the VQ-VAE stage first")
    hparams = vq_hparams(vq_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        save_llm(work / "llm", llm.to(torch.bfloat16), generation, tokenizer)
        for file in VQ_FILES:
            shutil.copyfile(vq_dir / file, work / file)
        np.load(work / "mean.npy"), np.load(work / "std.npy")  # readable arrays, or fail here
        (work / HELDOUT_FILE).write_text(json.dumps(heldout, indent=2) + "\n", encoding="utf-8")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "name": f"{name} (demo model, Bandai Namco Research Motion Dataset)",
            "stage": 2, "dataset": HUMANML3D.name, "feature_size": HUMANML3D.feature_size,
            "num_joints": HUMANML3D.num_joints, "fps": HUMANML3D.fps, "fixture": False, "seed": seed,
            "vqvae": {"file": "vqvae.safetensors", **hparams},
            "motion_tokens": MotionVocab.from_tokenizer(tokenizer).to_manifest(),
            "sources": [{"role": "training_data", "url": DATASET_URL, "license": "CC BY-NC 4.0"}],
            "created_by": created_by(COMMAND),
            "dtype": "bfloat16", "parameters": int(sum(p.numel() for p in llm.parameters())),
            "stock_tokenizer": False,
            "vocabulary": vocabulary_entry(contents, styles),
            "training": training,
        }
        write_manifest(work, manifest)
        (work / "LICENSE").write_text(license_text(name), encoding="utf-8")
        (work / "README.md").write_text(model_card(manifest, _vq_metrics(vq_dir)), encoding="utf-8")
        make_readable(work)
        swap_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir
