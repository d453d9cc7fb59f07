"""Demo model: critique and refinement of REAL held-out motions against a goal.

For every held-out clip of the labels in --pairs (default: real walks against "a person runs",
real runs against "a person walks", real left-hand waves against "a person waves the right
hand"), the project's Engine critiques the clip's motion tokens against the goal (`interleaved`
form: the model writes its analysis, the motion is injected, the model assesses it) and then
refines it. Reports how often the critique names the shown motion and says it is not the goal
(`The person walks, but should run.`), how often it is satisfied when the clip does match the
goal (control: the goal's own label), and how often the refined motion passes the goal's
kinematic check (`model_backend/train/label_checks.py`).

Usage: python benchmarks/demo_critique.py MODEL_DIR TOKENS.npz [--limit N]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model_backend.train import captions as C  # noqa: E402
from model_backend.train.lm_stage import load_token_clips  # noqa: E402

PAIRS = (("walk", "run", "a person runs"), ("run", "walk", "a person walks"),
         ("wave-left-hand", "wave-right-hand", "a person waves the right hand"),
         ("run", "run", "a person runs"), ("walk", "walk", "a person walks"))


def run(engine, task: str, prompt: str, codes: list[int]) -> list[dict]:
    events: list[dict] = []
    getattr(engine, task)(prompt, codes, emit=events.append, cancel=threading.Event())
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("tokens", type=Path, help="the motion stage's tokens.npz (its held-out clips are used)")
    parser.add_argument("--limit", type=int, default=10, help="clips per pair (default 10)")
    args = parser.parse_args()
    import torch

    from model_backend.llm.engine import Engine
    from model_backend.train.label_checks import check

    torch.set_num_threads(1)
    engine = Engine(args.model_dir, device="cpu")
    clips = [c for c in load_token_clips(args.tokens) if c.split != "train"]
    print(f"\n### Critique and refinement of real held-out clips ({engine.llm.precision}, greedy)\n")
    print("| shown | goal | clips | critique names the shown motion and the goal | satisfied | "
          "refined passes the goal's check | critique time (median) |")
    print("|---|---|---|---|---|---|---|")
    for shown, goal, prompt in PAIRS:
        chosen = [c for c in clips if c.content == shown][:args.limit]
        named = satisfied = refined_ok = 0
        times, example = [], ""
        for clip in chosen:
            codes = list(clip.codes[:49])
            start = time.perf_counter()
            critique = [e for e in run(engine, "critique", prompt, codes) if e["event"] == "assessment"][-1]
            times.append(time.perf_counter() - start)
            example = example or f"{critique['assessment']} / {critique['refinement']}"
            satisfied += critique["satisfied"]
            named += critique["assessment"] == C.assessment(shown, goal) if shown != goal else 0
            motions = [e for e in run(engine, "refine", prompt, codes) if e["event"] == "motion"]
            final = motions[-1]["tokens"] if motions else codes
            refined_ok += check(goal, engine.codec.decode(final).joints, engine.codec.fps)[0]
        n = max(1, len(chosen))
        times.sort()
        print(f"| {shown} | \"{prompt}\" | {len(chosen)} | {named / n:.0%} | {satisfied / n:.0%} | "
              f"{refined_ok / n:.0%} | {times[len(times) // 2] if times else 0:.2f} s |")
        print(f"|  | e.g. | | {example} | | | |")


if __name__ == "__main__":
    main()
