"""Extend: how seamless the join is, and whether greedy extension is deterministic.

The source is a real clip (../shared/data/humanml3d/012314_joints.npy, 170 frames at
20 fps, or --source FILE.npy in HumanML3D axes). Its last 2 s are encoded, forced as
the first tokens of the model's next motion (`prefix_tokens`), the model continues
(direct and interleaved), and the continuation is joined onto the source
(model_backend.rig_math.seam). Printed per mode: the joint jumps across the seam
(95th percentile and maximum, metres per frame, every joint, the blended overlap plus
two frames either side) against the motion's own frame-to-frame change (95th
percentile over the whole joined motion), whether the span starts with the encoded
tail, and whether a second greedy run gives the same tokens.

Usage (the backend environment's Python):
    .venv-backend/bin/python benchmarks/extend.py [--model DIR] [--seconds 4]
Without --model: $IRG_MODEL_DIR, else the demo model in presets/models, else a fixture
model (untrained: its continuation is noise) built in a temporary folder and deleted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from model_backend.llm.engine import Engine  # noqa: E402
from model_backend.convert.fixture import make_fixture  # noqa: E402
from model_backend.wire.manifest import resolve_model_dir  # noqa: E402
from model_backend.wire.protocol import decode_array  # noqa: E402
from model_backend.rig_math.seam import join, seam_report, tail_slice  # noqa: E402
from model_backend.rig_math.skeleton import to_blender  # noqa: E402

SHARED = Path(os.environ.get("IRG_SHARED_DIR", ROOT.parent / "shared"))
PROMPT = "then the person sits down"


def continuation(engine: Engine, prefix: list[int], mode: str, limit: int) -> dict:
    events: list[dict] = []
    engine.generate(PROMPT, mode=mode, max_motion_tokens=limit, prefix_tokens=prefix, max_rounds=2,
                    emit=events.append, cancel=threading.Event())
    motions = [e for e in events if e["event"] == "motion"]
    if not motions:
        sys.exit(f"{mode}: no motion ({events[-1]})")
    return motions[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--source", type=Path, default=SHARED / "data/humanml3d/012314_joints.npy")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    temp = Path(tempfile.mkdtemp(prefix="irg-extend-"))
    try:
        model = resolve_model_dir(args.model) or make_fixture(temp / "fixture", seed=0)
        engine = Engine(model, device="cpu", precision="fp32")
        rate = float(engine.codec.fps)
        source = to_blender(np.load(args.source)).astype(np.float64)
        prefix = engine.encode_tokens(source[tail_slice(len(source), rate)], rate)
        limit = min(50, len(prefix) + int(round(args.seconds * rate / 4)))
        print(f"source {args.source.name}: {len(source)} frames at {rate:g} fps; tail {len(prefix)} tokens; "
              f"model {engine.info['model']['name']} (fixture: {engine.info['model']['fixture']})")
        print()
        print("| mode | span tokens | prefix = encoded tail | greedy repeat equal | seam p95 | seam max | "
              "motion p95 | seam p95 / motion p95 | source alone p95 |")
        print("|---|---|---|---|---|---|---|---|---|")
        own = float(np.percentile(np.linalg.norm(np.diff(source, axis=0), axis=-1), 95))
        for mode in ("direct", "interleaved"):
            first = continuation(engine, prefix, mode, limit)
            again = continuation(engine, prefix, mode, limit)
            joined = join(source, decode_array(first["joints"]), len(prefix))
            f = seam_report(joined)
            print(f"| {mode} | {len(first['tokens'])} | {first['tokens'][:len(prefix)] == prefix} | "
                  f"{first['tokens'] == again['tokens']} | {f['seam_p95'] * 100:.2f} cm | {f['seam_max'] * 100:.2f} cm"
                  f" | {f['motion_p95'] * 100:.2f} cm | {f['ratio']:.2f} | {own * 100:.2f} cm |")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
