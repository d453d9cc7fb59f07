"""The extension zip's file list, from folders: what `[build] paths` in blender_manifest.toml must be.

Blender's `blender_ext.py build` packs exactly the listed files (it does not recurse into a
listed folder), so the list is derived here from the packaging rule:

- the root `__init__.py` (the extension package) and everything under `irg_blender_addon/`;
- from `model_backend/`, only its `__init__.py` and the numpy-only `rig_math/` and `wire/`;
- every file under `presets/` except the model weights under `presets/models/`: `make extension`
  (tools/build_extension.py) adds the demo model, and the backend wheel, to the zip it builds.

    python tools/build_paths.py            # print the list
    python tools/build_paths.py --check    # exit 1 when the manifest's list differs
    python tools/build_paths.py --write    # rewrite the manifest's list
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "blender_manifest.toml"
SHIPPED_BACKEND = ("rig_math", "wire")
sys.path.insert(0, str(ROOT))
from model_backend.wire.manifest import DEMO_MODEL  # noqa: E402

MODELS = "/".join(DEMO_MODEL[:-1])  # presets/models


def _files(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in folder.rglob(pattern)
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))


def shipped_paths() -> list[str]:
    """Every file the source manifest lists (the manifest is added by Blender), in manifest order."""
    backend = ROOT / "model_backend"
    presets = [p for p in _files(ROOT / "presets") if not p.startswith(MODELS + "/")]
    return ["__init__.py", *_files(ROOT / "irg_blender_addon", "*.py"), "model_backend/__init__.py",
            *(p for sub in SHIPPED_BACKEND for p in _files(backend / sub, "*.py")), *presets]


def manifest_text(paths: list[str], text: str) -> str:
    """The manifest text with its `paths = [...]` list replaced."""
    listed = "paths = [\n" + "".join(f'  "{p}",\n' for p in paths) + "]"
    new, count = re.subn(r"^paths = \[\n(?:.*\n)*?\]", listed, text, flags=re.M)
    if count != 1:
        raise SystemExit(f"{MANIFEST}: no `paths = [...]` list under [build]")
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the manifest's list differs")
    parser.add_argument("--write", action="store_true", help="rewrite the manifest's list")
    args = parser.parse_args(argv)
    paths = shipped_paths()
    text = MANIFEST.read_text(encoding="utf-8")
    if args.write:
        MANIFEST.write_text(manifest_text(paths, text), encoding="utf-8")
    elif args.check:
        if manifest_text(paths, text) != text:
            print(f"{MANIFEST.name} [build] paths differ from the folders: run tools/build_paths.py --write",
                  file=sys.stderr)
            return 1
    else:
        print("\n".join(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
