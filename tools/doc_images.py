"""Render the user guide's pictures with the project's own renderer (docs/img/*.png).

    .venv-bpy50/bin/python tools/doc_images.py [--model DIR] [--backend-python PY] [--out docs/img]

- thumbnail-strip.png: a version's strip, as the versions list and its popover show it
  (the real clip 012314 from ../shared on the default rig);
- compare.png: that version beside a ghost playing a second one (momask_000612);
- contact-sheet.png: the contact sheet of a three-prompt batch, one of them failed;
- extend.png: the strip of an extended version: the clip, then the model's continuation
  (made with `irg-motion extend`, by default with the demo model in presets/models; where
  that is absent a fixture model is built, whose continuation is noise).
The motions come from ../shared (IRG_SHARED_DIR); nothing is drawn by hand.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="irg-docs-user-"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from irg_blender_addon.anim import actions, ghost  # noqa: E402
from irg_blender_addon.core import skeleton  # noqa: E402
from irg_blender_addon.jobs import render_worker, thumbnails  # noqa: E402
from irg_blender_addon.jobs.run import pump_until_done  # noqa: E402
from irg_blender_addon.rig import armature as rig  # noqa: E402
from model_backend.motion.features import features_to_joints  # noqa: E402
from model_backend.wire.manifest import resolve_model_dir  # noqa: E402

SHARED = Path(os.environ.get("IRG_SHARED_DIR", ROOT.parent / "shared")) / "data" / "humanml3d"
GHOST_COLOR = (0.45, 0.7, 1.0, 1.0)
EXTEND_PROMPT = "then the person keeps walking"  # the demo model continues the action it is given


def _render(versions: list[bpy.types.Action], sheet: dict | None = None) -> None:
    job = thumbnails.ThumbnailJob([a.name for a in versions], sheet=sheet)
    if not pump_until_done(job, 300) or job.errors:
        sys.exit(f"rendering failed: {job.errors}")


def _compare(walk: bpy.types.Action, other: bpy.types.Action, armature, out: Path) -> None:
    """One Workbench frame of the armature and its ghost, stick figures as the render worker draws them."""
    shown = ghost.show(armature, other, offset=1.2)
    scene = render_worker._setup_scene(640, 300)
    sticks = [render_worker._stick_figure(armature), render_worker._stick_figure(shown)]
    sticks[0].color, sticks[1].color = render_worker.BODY_COLOR, GHOST_COLOR
    frame = int(sum(walk.frame_range) / 2)
    scene.frame_set(frame)
    points = []
    for obj in (armature, shown):
        points += [tuple(obj.matrix_world @ pb.head) for pb in obj.pose.bones]
        points += [tuple(obj.matrix_world @ pb.tail) for pb in obj.pose.bones]
    render_worker._frame_camera(scene.camera, np.asarray(points), 640 / 300)
    scene.render.image_settings.color_mode, scene.render.image_settings.compression = "RGB", 100
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    for obj in sticks:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
    ghost.hide(armature)


def _extend(clip: np.ndarray, python: str, model: str, temp: Path) -> np.ndarray:
    """The clip extended by `irg-motion extend` (HumanML3D axes, 20 fps)."""
    source, out = temp / "clip.npy", temp / "extended.npz"
    np.save(source, clip.astype(np.float32))
    run = subprocess.run([python, "-m", "model_backend", "extend", "--model", model, "--joints", str(source),
                          EXTEND_PROMPT, "--seconds", "4", "--mode", "direct", "--out", str(out),
                          "--device", "cpu"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if run.returncode != 0:
        sys.exit(f"irg-motion extend failed:\n{run.stderr[-3000:]}")
    print(run.stdout.strip())
    with np.load(out) as data:
        return data["joints"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend-python", default=str(ROOT / ".venv-backend" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="irg-docs-"))
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(temp / "guide.blend"))
        armature = rig.create_default_rig(bpy.context)
        clip = np.load(SHARED / "012314_joints.npy")
        other = features_to_joints(np.load(SHARED / "momask_000612_features.npy"))
        walk = actions.write_version(armature, skeleton.to_blender(clip), prompt="HumanML3D clip 012314")
        second = actions.write_version(armature, skeleton.to_blender(other), prompt="MoMask example clip 000612")
        _render([walk])
        shutil.copyfile(thumbnails.thumb_path(walk), args.out / "thumbnail-strip.png")
        actions.set_active_version(armature, walk)
        _compare(walk, second, armature, args.out / "compare.png")
        rows = [{"title": "HumanML3D clip 012314", "status": f"done: {walk.name}", "action": walk.name},
                {"title": "MoMask example clip 000612", "status": f"done: {second.name}", "action": second.name},
                {"title": "a person flies to the moon", "status": "failed: the model produced no motion",
                 "failed": True}]
        _render([walk, second], sheet={"out": str(args.out / "contact-sheet.png"), "title": "guide.blend: 3 prompts",
                                       "rows": rows})
        model = resolve_model_dir(args.model)
        if model is None:
            model = str(temp / "fixture")
            subprocess.run([args.backend_python, "-m", "model_backend", "make-fixture", model], check=True,
                           capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        longer = actions.write_version(armature, skeleton.to_blender(_extend(clip, args.backend_python, model,
                                                                              temp)),
                                       prompt=EXTEND_PROMPT, parent=walk, source="extend")
        _render([longer])
        shutil.copyfile(thumbnails.thumb_path(longer), args.out / "extend.png")
        for path in sorted(args.out.glob("*.png")):
            print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
