"""`make extension`: the extension zip an animator installs, carrying the backend and the demo model.

1. Build the `irg-motion` wheel (`pip wheel --no-deps`, from a copy of the sources so the
   checkout gets no build/ or egg-info folders).
2. Stage the files the packaging rule ships (tools/build_paths.py, the same list the source
   blender_manifest.toml keeps), the wheel as `backend/<wheel>` and the
   demo model folder at its place in the package (`presets/models/irg-tiny/`).
3. Write the staged blender_manifest.toml: the source one with those files added to
   `[build] paths` (Blender packs exactly the listed files).
4. Pack the stage with Blender's own `blender_ext.py build`.

The wheel is data in the zip: "Set Up Backend" installs it into the backend's own
environment. It is deliberately not a manifest `wheels` entry, which Blender would
install into its own Python (the backend imports torch, which never enters Blender).

Run with a bpy environment's Python (it finds Blender's tool next to bpy):
    .venv-bpy50/bin/python tools/build_extension.py --out out/extension
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from irg_blender_addon.backend.setup import BUNDLED_WHEELS  # noqa: E402 (plain Python, no bpy)
from model_backend.wire.manifest import ModelFolderError, default_model_dir, read_manifest, shipped_model  # noqa: E402
from tools.build_paths import MANIFEST, MODELS, manifest_text, shipped_paths  # noqa: E402

WHEEL_SOURCES = ("pyproject.toml", "README.md", "model_backend")


class BuildError(Exception):
    """A build that cannot go on; the message names the problem and the fix."""


def build_wheel(out_dir: Path, python: str = sys.executable) -> Path:
    """Build the irg-motion wheel into a new folder out_dir (no dependencies); return its path."""
    with tempfile.TemporaryDirectory(prefix="irg-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(ROOT / name, src / name)
        run([python, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out_dir), str(src)],
            "building the irg-motion wheel", "check that pip can reach setuptools (pyproject.toml [build-system])")
    wheels = sorted(out_dir.glob("irg_motion-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pip wrote {len(wheels)} irg_motion wheels into {out_dir}, expected one")
    return wheels[0]


def model_files(model_dir: Path) -> list[str]:
    """The model folder's files, relative to it, after checking that it is a complete model folder."""
    try:
        read_manifest(model_dir)
    except ModelFolderError as exc:
        raise BuildError(f"the demo model cannot be packed: {exc}") from None
    return sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")
                  if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                             for part in p.relative_to(model_dir).parts))


def stage(stage_dir: Path, wheel: Path, model_dir: Path) -> list[str]:
    """Copy what the zip holds into stage_dir with a manifest listing it; return the paths added to the
    source manifest's list (the wheel, then the model's files)."""
    text = MANIFEST.read_text(encoding="utf-8")
    listed = shipped_paths()  # from the folders, so a stale list in the source manifest cannot drop a file
    rel_model = model_dir.relative_to(ROOT).as_posix()
    wheel_path = f"{BUNDLED_WHEELS}/{wheel.name}"
    models = [f"{rel_model}/{p}" for p in model_files(model_dir)]
    for rel in (*listed, *models):
        _copy(ROOT / rel, stage_dir / rel)
    _copy(wheel, stage_dir / wheel_path)
    (stage_dir / MANIFEST.name).write_text(manifest_text(listed + [wheel_path, *models], text), encoding="utf-8")
    return [wheel_path, *models]


def blender_ext_tool() -> Path:
    """Blender's extension tool (`blender --command extension` runs the same script), found next to bpy."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("bpy is not importable here: run this with a bpy environment's Python "
                         "(.venv-bpy50/bin/python, made by `make envs`)")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise BuildError(f"Blender's blender_ext.py was not found under {list(spec.submodule_search_locations)}")


def run(argv: list[str], what: str, fix: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"{what} failed (exit status {out.returncode}): {fix}\n{out.stdout[-3000:]}"
                         f"{out.stderr[-3000:]}")
    return out.stdout


def build_extension(out_dir: Path) -> Path:
    """Build the zip into out_dir; return its path."""
    model_dir = shipped_model()
    if model_dir is None:
        raise BuildError(f"the demo model {default_model_dir()} is missing (no manifest.json): it is part of the "
                         "repository, restore it with git before building the extension")
    version = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))["version"]
    out_dir = out_dir.absolute()
    with tempfile.TemporaryDirectory(prefix="irg-extension-") as tmp:
        wheel = build_wheel(Path(tmp) / "dist")
        if wheel.name.split("-")[1] != version:  # Set Up Backend looks for the wheel of its own version
            raise BuildError(f"the wheel {wheel.name} is not version {version} of {MANIFEST.name}: give "
                             "pyproject.toml and blender_manifest.toml the same version")
        stage_dir = Path(tmp) / "stage"
        stage(stage_dir, wheel, model_dir)
        tool = [sys.executable, str(blender_ext_tool())]
        run([*tool, "validate", str(stage_dir)], "Blender's validation of the package", "fix what it names")
        out_dir.mkdir(parents=True, exist_ok=True)
        zip_path = out_dir / f"irg_motion-{version}.zip"
        run([*tool, "build", "--source-dir", str(stage_dir), "--output-filepath", str(zip_path)],
            "Blender's extension build", "fix what it names")
    return zip_path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "out" / "extension"), help="output folder (default out/extension)")
    p.add_argument("--json", action="store_true", help="print the zip's path, size and files as JSON")
    args = p.parse_args(argv)
    try:
        zip_path = build_extension(Path(args.out))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
    size = os.path.getsize(zip_path)
    if args.json:
        print(json.dumps({"zip": str(zip_path), "bytes": size,
                          "files": {i.filename: i.file_size for i in infos}}))
    else:
        print(f"built {zip_path}: {size / 1e6:.1f} MB, {len(infos)} files")
        for i in infos:
            if i.filename.startswith((BUNDLED_WHEELS + "/", MODELS + "/")):
                print(f"  {i.filename}  {i.file_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
