"""`make demo`: prompt -> backend -> versioned Actions -> out/demo.blend, headless.

Run with a bpy environment's Python. Registers the add-on from this checkout,
generates for a prompt with the real backend subprocess, saves the scene and
prints where the versions are.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `make demo` asks for when PROMPT is not given, and the content label its motion shows
# (tests/e2e/test_demo_motion.py checks it with that label's kinematic check).
DEFAULT_PROMPT = "a person walks forward"
DEFAULT_LABEL = "walk"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"what to animate (default {DEFAULT_PROMPT!r})")
    p.add_argument("--model", default=None,
                   help="model folder (default: $IRG_MODEL_DIR, else the demo model in presets/models)")
    p.add_argument("--backend-python", required=True)
    p.add_argument("--out", default="out/demo.blend")
    p.add_argument("--mode", default="interleaved", choices=["interleaved", "direct"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # bpy writes to the user's config folder unless told otherwise.
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="irg-demo-blender-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from model_backend.wire.manifest import MODEL_ENV, default_model_dir, resolve_model_dir

    found = resolve_model_dir(args.model)
    if found is None:
        print(f"error: no model: the demo model {default_model_dir()} is missing (restore it with git), or give "
              f"another model folder with --model or {MODEL_ENV} (`make fixture` builds an untrained one)",
              file=sys.stderr)
        return 2
    import bpy

    import irg_blender_addon
    from irg_blender_addon.anim import actions
    from irg_blender_addon import api

    model_dir = Path(found).resolve()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    print(f"Model: {manifest.get('name')} ({model_dir})")
    if manifest.get("fixture"):
        print(f"NOTE: this is a tiny UNTRAINED fixture model: its motion is noise. Unset {MODEL_ENV} to use the "
              "demo model, or set it to a converted IRG-MotionLLM folder (docs/model-setup.md).")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    irg_blender_addon.register()
    try:
        start = time.perf_counter()
        new = api.generate(args.prompt, model_dir=str(model_dir), backend_python=args.backend_python,
                               mode=args.mode, seed=args.seed)
        elapsed = time.perf_counter() - start
        out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Save next to the target and rename, so an interrupted save never leaves half a file.
        tmp = out.with_suffix(".tmp.blend")
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False, copy=True)
        os.replace(tmp, out)
        arm = next((o for o in bpy.data.objects if o.type == "ARMATURE" and o.animation_data
                    and o.animation_data.action in new), None)
        print(f"Generated {len(new)} version(s) in {elapsed:.1f} s for {args.prompt!r}:")
        for action in api.versions(arm) if arm else new:
            info = actions.version_info(action)
            print(f"  {action.name}: round {info.get('round')}, {int(action.frame_range[1] - action.frame_range[0]) + 1} frames, "
                  f"{len(info.get('tokens', []))} tokens, source {info.get('source')}")
        print(f"Saved {out}: armature {arm.name if arm else None!r}; each version is an Action "
              "(fake user, metadata under action['irg']), the newest is active.")
    finally:
        irg_blender_addon.unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())
