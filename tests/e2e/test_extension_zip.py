"""The extension zip is all an animator needs: built with Blender's own tool, installed into a
fresh user folder, "Set Up Backend" installs the backend from the wheel inside the zip and the
first Generate uses the demo model inside the zip.

Each run is a separate Blender process (outside the repository, without PYTHONPATH), so only
the installed extension is importable. Timers never run in background mode: the script pumps
the setup task and the generation itself.

Two variants:
- `test_zip_sets_up_the_backend_and_generates` (in `make test`): the new environment sees the
  backend environment's packages through a .pth file that names a copy of its site-packages
  made of links, without irg-motion. pip still installs the backend from the bundled wheel and
  the check and the backend run from it; torch and friends are "already satisfied" (a fresh
  install costs about 2 minutes, mostly unpacking torch).
- `test_fresh_install_from_the_zip` (`make test-install`): nothing shared: torch 2.13.0 and every
  dependency are installed into the new environment by pip from the package index.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from model_backend.wire.manifest import default_model_dir

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow
EXTENSION = "bl_ext.user_default.irg_motion"
VERSION = "0.1.0"
WHEEL = f"irg_motion-{VERSION}-py3-none-any.whl"
FRESH = os.environ.get("IRG_TEST_FRESH_INSTALL") == "1"

# Run by a fresh Blender (bpy) process: install the zip, set up the backend, generate.
CHILD = textwrap.dedent('''
    import importlib, json, sys, time
    from pathlib import Path
    import bpy
    args = json.loads(sys.argv[-1])
    bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default", enable_on_install=True)
    name = args["extension"]
    root = Path(sys.modules[name].__file__).parent
    settings = importlib.import_module(name + ".irg_blender_addon.settings")
    tasks = importlib.import_module(name + ".irg_blender_addon.jobs.tasks")
    api = importlib.import_module(name + ".irg_blender_addon.api")
    out = {"root": str(root), "default_model": settings.get_settings().model_dir,
           "default_source": settings.default_backend_source(),
           "env_dir": str(settings.default_env_dir()), "model_text": settings.default_model_text()}
    p = bpy.context.preferences.addons[name].preferences
    p.torch_build = "cpu"
    if args["base_python"]:
        sys.executable = args["base_python"]  # see the test: a base Python that shares installed packages
    started = time.monotonic()
    bpy.ops.irg.setup_backend()
    task = tasks.wait_task(timeout=args["timeout"])
    job = task.job
    out.update(setup_s=time.monotonic() - started, state=job.state, error=job.error, info=job.info,
               source=job.backend_source, log=job.log_tail(400), backend_python=p.backend_python)
    if job.state == "done":
        started = time.monotonic()
        versions = api.generate("a person walks forward", mode="direct", max_motion_tokens=8, seed=0)
        out["generate_s"] = time.monotonic() - started
        out["versions"] = [{"name": a.name, "frames": a.frame_range[1] - a.frame_range[0] + 1,
                            "irg": {k: str(v) for k, v in a["irg"].items()}} for a in versions]
        out["model_dir"] = settings.get_settings().model_dir
    out["torch_in_blender"] = "torch" in sys.modules
    print("RESULT " + json.dumps(out), flush=True)
''')


@pytest.fixture(scope="module")
def extension_zip(demo_model, tmp_path_factory) -> Path:
    """`make extension` into a temp folder (the wheel is built, Blender's tool packs the zip)."""
    out = tmp_path_factory.mktemp("extension")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "build_extension.py"), "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    built = json.loads(run.stdout.strip().splitlines()[-1])
    return Path(built["zip"])


def test_the_zip_carries_the_wheel_and_the_demo_model_but_never_loads_them(extension_zip, demo_model):
    with zipfile.ZipFile(extension_zip) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    model_files = {p.relative_to(ROOT).as_posix() for p in demo_model.rglob("*") if p.is_file()}
    assert f"backend/{WHEEL}" in names and model_files <= names
    assert set(manifest["build"]["paths"]) | {"blender_manifest.toml"} == names
    assert "wheels" not in manifest  # Blender would install a `wheels` entry into its own Python
    assert not any(n.startswith("model_backend/") and n.split("/")[1] in ("llm", "vq", "serve", "cli")
                   for n in names)


def _linked_site_packages(backend_python: Path, where: Path) -> Path:
    """A folder of links to every entry of the backend environment's site-packages except the
    backend itself (irg-motion, model_backend, its editable-install hooks)."""
    site = Path(subprocess.run([str(backend_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    where.mkdir()
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("irg_motion", "model_backend", "__editable__", "pip", "_distutils_hack")) \
                or low.endswith(".pth"):
            continue
        (where / entry.name).symlink_to(entry)
    return where


def _sharing_base_python(tmp_path: Path, linked: Path) -> Path:
    """A stand-in for Blender's Python: `-m venv` as usual, then a .pth file that lets the new
    environment see `linked` (after its own site-packages, so what pip installs there wins)."""
    script = tmp_path / "base-python"
    script.write_text(textwrap.dedent(f'''\
        #!/bin/sh
        "{sys.executable}" "$@" || exit $?
        for last; do :; done
        for site in "$last"/lib/python3*/site-packages; do
          echo "{linked}" > "$site/zz-irg-test-shared.pth"
        done
    '''))
    script.chmod(0o755)
    return script


def _run_blender(tmp_path: Path, zip_path: Path, base_python: Path | None, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "IRG_MODEL_DIR", "IRG_BACKEND_PYTHON", "IRG_SERVER_URL", "VIRTUAL_ENV")}
    env.update(BLENDER_USER_RESOURCES=str(tmp_path / "user"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    args = {"zip": str(zip_path), "extension": EXTENSION, "timeout": timeout,
            "base_python": str(base_python) if base_python else ""}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=timeout + 240)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-4000:] + run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _check(result: dict, fresh: bool) -> None:
    root = Path(result["root"])
    assert result["default_model"] == str(root / default_model_dir().relative_to(ROOT))
    assert result["default_source"] == str(root / "backend" / WHEEL)
    assert result["model_text"] == f"Empty: the demo model that comes with the add-on ({result['default_model']})"
    assert result["state"] == "done", f"{result['error']}\n{result['log']}"
    lines = result["log"].splitlines()
    commands = [line.split() for line in lines if line.startswith("$ ")]
    pip_installs = [c[-1] for c in commands if c[2:5] == ["-m", "pip", "install"]]
    assert pip_installs[0] == "torch==2.13.0" and len(pip_installs) == 2  # torch first and pinned, then:
    assert result["source"] == str(root / "backend" / WHEEL)  # the backend from the wheel in the zip
    installed = [line.split()[2:] for line in lines if line.startswith("Successfully installed")]
    assert "irg-motion-0.1.0" in installed[-1]
    if fresh:  # torch and every dependency came from the package index
        assert any(p.startswith("torch-2.13.0") for p in installed[0])
        assert any(p.startswith("transformers-") for p in installed[-1])
    else:  # only the backend itself: the rest was already there
        assert installed[-1] == ["irg-motion-0.1.0"]
    assert result["info"]["dist_version"] == VERSION and result["info"]["torch"].startswith("2.13.0")
    env_python = Path(result["backend_python"])
    assert env_python == Path(result["env_dir"]) / "bin" / "python" and env_python.is_file()
    # The backend runs from the wheel installed in that environment (cwd: a folder without model_backend).
    where = subprocess.run([str(env_python), "-c", "import model_backend; print(model_backend.__file__)"],
                           capture_output=True, text=True, check=True, cwd=env_python.parent)
    assert Path(where.stdout.strip()).parent.parent.name == "site-packages"
    assert env_python.parent.parent in Path(where.stdout.strip()).parents
    versions = result["versions"]
    assert [v["name"] for v in versions] == ["a_person_walks_forward.v001"]
    assert versions[0]["frames"] > 1 and versions[0]["irg"]["round"] == "1"
    assert result["model_dir"] == result["default_model"]
    assert result["torch_in_blender"] is False


def test_zip_sets_up_the_backend_and_generates(extension_zip, backend_python, tmp_path):
    linked = _linked_site_packages(backend_python, tmp_path / "shared-site-packages")
    started = time.monotonic()
    result = _run_blender(tmp_path, extension_zip, _sharing_base_python(tmp_path, linked), timeout=300)
    _check(result, fresh=False)
    print(f"setup {result['setup_s']:.1f} s, generate {result['generate_s']:.1f} s, "
          f"whole run {time.monotonic() - started:.1f} s")


@pytest.mark.skipif(not FRESH, reason="a fully fresh backend install takes minutes (torch and its dependencies "
                                      "from the package index): run `make test-install`")
def test_fresh_install_from_the_zip(extension_zip, tmp_path):
    started = time.monotonic()
    result = _run_blender(tmp_path, extension_zip, None, timeout=900)
    _check(result, fresh=True)
    print(f"setup {result['setup_s']:.1f} s, generate {result['generate_s']:.1f} s, "
          f"whole run {time.monotonic() - started:.1f} s")
