"""Ground benchmark (bpy): do the rig's feet follow the source's floor? With and without the correction.

    .venv-bpy50/bin/python benchmarks/ground.py [--prompts "a person walks forward" ...] [CLIP.npy ...]

Retargeting by directions keeps the rig's own leg lengths; where a motion's legs are longer or
shorter than at rest (generated motion: the decoded bone lengths vary from frame to frame) the
rig's feet float or sink by the difference. `retarget.ground_correction` moves the pelvis by it.
For each clip onto the default rig, per frame: the rig's lowest foot point minus the source's
lowest foot joint (scaled to the rig), median removed, p5 / p95 in cm; and the p95 of the
pelvis's vertical acceleration against the source's (cm/frame^2: the correction must not add
jitter). Clips: the shared real captures 012314 and MoMask 000612, the given .npy joint files
(HumanML3D axes, 20 fps), and the demo model's greedy `direct` motions for --prompts (made with
.venv-backend's irg-motion generate).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from irg_blender_addon.core import skeleton  # noqa: E402
from irg_blender_addon.rig import armature as rig, retarget  # noqa: E402
from model_backend.motion.features import features_to_joints  # noqa: E402

PROMPTS = ("a person walks forward", "a person dashes forward", "a happy person runs forward",
           "a tired man walks briskly forward")
SHARED = ROOT.parent / "shared" / "data" / "humanml3d"


def generated(prompts: list[str], folder: Path) -> dict[str, np.ndarray]:
    """The demo model's greedy direct motions (HumanML3D joints) for the prompts."""
    python = ROOT / ".venv-backend" / "bin" / "python"
    out = {}
    for n, prompt in enumerate(prompts):
        path = folder / f"{n}.npz"
        subprocess.run([str(python), "-m", "model_backend", "generate", prompt, "--mode", "direct", "--device", "cpu",
                        "--out", str(path)], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
        out[prompt] = np.load(path)["joints"]
    return out


def measure(plan: retarget.Plan, clip: np.ndarray) -> tuple[float, float, float, float]:
    """(gap p5, gap p95, pelvis accel p95, source pelvis accel p95), cm, for one clip."""
    joints = skeleton.to_blender(clip.astype(np.float64))
    out = retarget.retarget(plan, joints, fps=20.0)
    fronts, _ = retarget.solve_fronts(joints)
    ev = retarget._solve(plan, joints, fronts, None)
    rig_low = retarget.foot_heights(plan, ev, out.heads).min(axis=1)
    source_low = joints[:, retarget.FOOT_JOINTS, 2].min(axis=1) * out.scale
    gap = (rig_low - source_low) * 100.0
    gap -= np.median(gap)
    accel = np.abs(np.diff(out.heads[:, 2], 2)) * 100.0
    source_accel = np.abs(np.diff(joints[:, 0, 2] * out.scale, 2)) * 100.0
    return (float(np.percentile(gap, 5)), float(np.percentile(gap, 95)), float(np.percentile(accel, 95)),
            float(np.percentile(source_accel, 95)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", type=Path, help="more joint files (T, 22, 3), HumanML3D axes, 20 fps")
    parser.add_argument("--prompts", nargs="*", default=list(PROMPTS))
    args = parser.parse_args()
    clips = {}
    if SHARED.exists():
        clips["real: 012314"] = np.load(SHARED / "012314_joints.npy")
        clips["real: MoMask 000612"] = features_to_joints(np.load(SHARED / "momask_000612_features.npy"))
    clips.update({path.name: np.load(path) for path in args.clips})
    with tempfile.TemporaryDirectory() as tmp:
        if args.prompts and (ROOT / ".venv-backend").exists():
            clips.update({f"demo model: {p}": j for p, j in generated(args.prompts, Path(tmp)).items()})
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = rig.create_default_rig(bpy.context)
    found = retarget.bone_map(obj, "auto")
    plan = retarget.make_plan(retarget.read_rest(obj), found.mapping, found.root_bone)
    correction = retarget.ground_correction
    print("| clip | frames | rig foot - source foot p5 / p95 cm: without | with | pelvis z accel p95: "
          "source | without | with |\n|---|---|---|---|---|---|---|")
    for name, clip in clips.items():
        retarget.ground_correction = lambda plan, ev, pelvis, *rest: np.zeros(len(pelvis))
        lo0, hi0, acc0, source = measure(plan, clip)
        retarget.ground_correction = correction
        lo1, hi1, acc1, _ = measure(plan, clip)
        print(f"| {name} | {len(clip)} | {lo0:.1f} / {hi0:.1f} | {lo1:.1f} / {hi1:.1f} | {source:.2f} | {acc0:.2f} | "
              f"{acc1:.2f} |")


if __name__ == "__main__":
    main()
