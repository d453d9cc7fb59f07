"""Demo model benchmark: VQ-VAE reconstruction, label checks on real clips, generated motion vs its label.

Prints markdown tables:
  1. VQ-VAE reconstruction of the held-out clips through the real decode path (tokens -> VQ
     decode -> de-normalise -> features -> joints): MPJPE in mm, root-aligned per frame (the
     convention of MoMask's `calculate_mpjpe` for HumanML3D VQ-VAEs) and global (root drift
     included), over each clip's first 196 frames (9.8 s, the longest motion) and whole clips.
  2. Each label check on the held-out real clips, and on their VQ-VAE reconstructions:
     the positive rate on its own label and the false-positive rate on all other labels.
  3. With a trained model folder (manifest.json + llm/): for every held-out caption wording,
     generate with the project's Engine (greedy, seeded) in `interleaved` and `direct` mode,
     check the final motion against the caption's label (per-label and mean accuracy), how
     often the first and the final motion pass, the time to the first motion token and the
     whole-trace time. Skipped with the reason when the folder has no LLM.
Wordings: --prompts, else MODEL_DIR/heldout_prompts.json: a list of {"label", "prompt"}
objects (or a {label: [prompts]} object).
Usage: python benchmarks/demo_model.py MODEL_DIR CACHE [--prompts FILE] [--modes interleaved direct]
                                       [--per-label N] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from model_backend.train.dataset import MotionSet, load_cache  # noqa: E402
from model_backend.train.label_checks import CHECKS, check, measure  # noqa: E402


def load_codec(model_dir: Path) -> Any:
    """The codec of a full model folder (manifest.json) or of a VQ-VAE folder (vqvae.json)."""
    from model_backend.vq.codec import MotionCodec
    from model_backend.train.vq_train import load_vq_codec

    if (model_dir / "manifest.json").is_file():
        return MotionCodec.from_dir(model_dir)
    if (model_dir / "vqvae.json").is_file():
        return load_vq_codec(model_dir)
    raise SystemExit(f"{model_dir}: neither a model folder (manifest.json) nor a VQ-VAE folder (vqvae.json)")


# ---------------------------------------------------------------- 1. reconstruction

def reconstruction(codec: Any, motion: MotionSet) -> dict[int, np.ndarray]:
    """Print the MPJPE table; return each held-out clip's reconstructed joints (whole clip)."""
    from model_backend.train.vq_train import encode_features

    clips = motion.indices(heldout=True)
    rows: dict[str, list[tuple[float, float]]] = {"first 196 frames": [], "whole clips": []}
    recon: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    for i in clips:
        for name, limit in (("first 196 frames", 196), ("whole clips", None)):
            decoded = codec.decode(encode_features(codec, motion.clip_features(i)[:limit])).joints
            truth = motion.clip_joints(i)[:len(decoded)]
            aligned = np.linalg.norm((decoded - decoded[:, :1]) - (truth - truth[:, :1]), axis=-1).mean()
            rows[name].append((1000 * aligned, 1000 * np.linalg.norm(decoded - truth, axis=-1).mean()))
            if limit is None:
                recon[i] = decoded
    seconds = time.perf_counter() - start
    print(f"\n### VQ-VAE reconstruction, {len(clips)} held-out clips (MPJPE, mm)\n")
    print("| frames | root-aligned mean | root-aligned median | global mean | global median |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        a, g = np.array(values).T
        print(f"| {name} | {a.mean():.1f} | {np.median(a):.1f} | {g.mean():.1f} | {np.median(g):.1f} |")
    print(f"\n(encode + decode of {2 * len(clips)} clips: {seconds:.1f} s)")
    return recon


# ---------------------------------------------------------------- 2. checks on real clips

def check_table(motion: MotionSet, recon: dict[int, np.ndarray]) -> None:
    clips = motion.indices(heldout=True)
    real = {i: measure(motion.clip_joints(i), motion.fps) for i in clips}
    rebuilt = {i: measure(recon[i], motion.fps) for i in clips if len(recon[i]) >= 2}
    print(f"\n### Label checks on the {len(clips)} held-out clips (real / VQ-VAE reconstruction)\n")
    print("| label | check | clips | passes on its label | false positives on other labels |")
    print("|---|---|---|---|---|")
    for label, c in CHECKS.items():
        own = [i for i in clips if motion.contents[i] == label]
        other = [i for i in clips if motion.contents[i] != label]

        def rate(ids: list[int], table: dict) -> str:
            return f"{np.mean([c.passes(table[i]) for i in ids if i in table]):.0%}" if ids else "-"
        print(f"| {label} | {c.name} | {len(own)} | {rate(own, real)} / {rate(own, rebuilt)} | "
              f"{rate(other, real)} / {rate(other, rebuilt)} |")


# ---------------------------------------------------------------- 3. generation

def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(label, prompt) pairs from a JSON list of {"label", "prompt"} or a {label: [prompts]} object."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if isinstance(data, dict):
        return [(label, p) for label, prompts in data.items() for p in prompts]
    if isinstance(data, list) and all(isinstance(d, dict) and {"label", "prompt"} <= set(d) for d in data):
        return [(d["label"], d["prompt"]) for d in data]
    raise SystemExit(f"{path}: expected a list of {{'label', 'prompt'}} objects or a {{label: [prompts]}} object")


def run_one(engine: Any, prompt: str, mode: str, seed: int, temperature: float = 0.0) -> dict[str, Any]:
    """One generation (greedy at temperature 0): the motions' tokens, time to the first motion token, total time."""
    events: list[tuple[float, dict]] = []
    start = time.perf_counter()
    engine.generate(prompt, mode=mode, seed=seed, temperature=temperature,
                    emit=lambda e: events.append((time.perf_counter(), e)), cancel=threading.Event())
    first = next((t for t, e in events if e["event"] == "motion_tokens"), None)
    return {"motions": [e["tokens"] for _, e in events if e["event"] == "motion"],
            "first_token_s": None if first is None else first - start,
            "total_s": events[-1][0] - start if events else time.perf_counter() - start}


def generation(model_dir: Path, prompts: list[tuple[str, str]], modes: list[str], seed: int,
               temperature: float = 0.0) -> None:
    from model_backend.llm.engine import Engine

    engine = Engine(model_dir, device="cpu")
    how = "greedy" if temperature == 0 else f"sampled at temperature {temperature}"
    print(f"\n### Generated motion vs its label ({len(prompts)} held-out wordings, {how}, seed {seed}, "
          f"{engine.llm.precision})\n")
    summary = []
    for mode in modes:
        results: dict[str, list[tuple[bool, bool]]] = {}
        first_s, total_s = [], []
        for label, prompt in prompts:
            out = run_one(engine, prompt, mode, seed, temperature)
            if not out["motions"]:
                results.setdefault(label, []).append((False, False))
                continue
            passes = [check(label, engine.codec.decode(t).joints, engine.codec.fps)[0]
                      if len(t) >= 1 else False for t in (out["motions"][0], out["motions"][-1])]
            results.setdefault(label, []).append((passes[0], passes[1]))
            if out["first_token_s"] is not None:
                first_s.append(out["first_token_s"])
            total_s.append(out["total_s"])
        per_label = {label: np.mean([f for _, f in r]) for label, r in results.items()}
        flat = [x for r in results.values() for x in r]
        summary.append((mode, per_label, np.mean([a for a, _ in flat]), np.mean([b for _, b in flat]),
                        first_s, total_s))
    labels = sorted({label for _, per, *_ in summary for label in per}, key=list(CHECKS).index)
    print("| label | " + " | ".join(f"{m} final" for m, *_ in summary) + " |")
    print("|---|" + "---|" * len(summary))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{per.get(label, float('nan')):.0%}" for _, per, *_ in summary) + " |")
    print("| **mean over labels** | " + " | ".join(f"**{np.mean(list(per.values())):.0%}**"
                                                  for _, per, *_ in summary) + " |")
    print("\n| mode | first motion passes | final motion passes | first motion token (median / max) | "
          "whole trace (median / max) |")
    print("|---|---|---|---|---|")
    for mode, _, first, final, first_s, total_s in summary:
        ft = f"{statistics.median(first_s):.2f} / {max(first_s):.2f} s" if first_s else "-"
        print(f"| {mode} | {first:.0%} | {final:.0%} | {ft} | "
              f"{statistics.median(total_s):.2f} / {max(total_s):.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a model folder, or the VQ-VAE folder alone")
    parser.add_argument("cache", type=Path, help="the motion cache (python -m model_backend.train.dataset)")
    parser.add_argument("--prompts", type=Path, help="held-out wordings (default MODEL_DIR/heldout_prompts.json)")
    parser.add_argument("--modes", nargs="+", default=["interleaved", "direct"])
    parser.add_argument("--per-label", type=int, default=None, help="use at most N wordings per label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (default); above 0 samples, so first attempts vary and refinement shows")
    parser.add_argument("--skip-motion-side", action="store_true",
                        help="only the generation tables (no reconstruction or real-clip check tables)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads 1; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if not args.skip_motion_side:
        motion = load_cache(args.cache)
        codec = load_codec(args.model_dir)
        check_table(motion, reconstruction(codec, motion))

    prompts_path = args.prompts or args.model_dir / "heldout_prompts.json"
    if not (args.model_dir / "manifest.json").is_file() or not (args.model_dir / "llm").is_dir():
        print(f"\n(generation skipped: {args.model_dir} has no trained LLM (manifest.json + llm/))")
        return
    if not prompts_path.is_file():
        print(f"\n(generation skipped: no held-out wordings at {prompts_path}; pass --prompts)")
        return
    prompts = [(label, p) for label, p in read_prompts(prompts_path) if label in CHECKS]
    if args.per_label:
        kept: dict[str, int] = {}
        prompts = [(lb, p) for lb, p in prompts if kept.setdefault(lb, 0) < args.per_label
                   and not kept.__setitem__(lb, kept[lb] + 1)]
    if not prompts:
        print(f"\n(generation skipped: {prompts_path} has no wording for a checked label)")
        return
    generation(args.model_dir, prompts, args.modes, args.seed, args.temperature)


if __name__ == "__main__":
    main()
