"""Preferences: merged settings with the server fields (the token never shown), local or remote
backend, "Set up backend" through its operator (a real venv made with this Python, a real
offline pip install of a stand-in backend project), "Convert model..." through its operator
(the real converter in the backend Python), the task's log, and the preferences and Backend
panel drawn in every state against a recording layout."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bpy
import pytest

import irg_blender_addon
from irg_blender_addon.backend import local as client
from irg_blender_addon.backend import registry
from irg_blender_addon.ui import prefs
from irg_blender_addon.jobs import tasks as tasks_mod
from irg_blender_addon import settings
from irg_blender_addon.ui import backend as backend_ui
from irg_blender_addon.backend.base import BackendError
from model_pieces import base_folder
from ui_recorder import Recorder, check_calls, draw

ROOT = Path(__file__).resolve().parents[3]

# A PEP 517 backend inside the stand-in project: it zips the project's packages into a wheel,
# so pip installs it offline. The packages stand in for the backend and its heavy dependencies.
BUILD_BACKEND = '''\
import base64, hashlib, pathlib, zipfile

VERSION = "0.1.0"
PACKAGES = ("model_backend", "torch", "transformers")


def _digest(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    root = pathlib.Path(__file__).parent
    info = f"irg_motion-{VERSION}.dist-info"
    files = {p.relative_to(root).as_posix(): p.read_bytes() for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\\nName: irg-motion\\nVersion: {VERSION}\\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    name = f"irg_motion-{VERSION}-py3-none-any.whl"
    lines = []
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            lines.append(f"{path},{_digest(data)},{len(data)}")
        wheel.writestr(f"{info}/RECORD", "\\n".join(lines + [f"{info}/RECORD,,"]) + "\\n")
    return name
'''
PYPROJECT = '''\
[build-system]
requires = []
build-backend = "build_backend"
backend-path = ["."]

[project]
name = "irg-motion"
version = "0.1.0"
'''
STANDINS = {"model_backend": '__version__ = "0.1.0-standin"\n',
            "torch": '__version__ = "2.13.0"\n\n\nclass version:\n    cuda = None\n',
            "transformers": '__version__ = "5.24.0"\n'}


def draw_prefs(p) -> Recorder:
    layout = Recorder()
    prefs.draw_preferences(layout, p)
    check_calls(layout)
    return layout


def draw_backend_panel() -> Recorder:
    return draw(backend_ui.IRG_PT_backend, bpy.context)


@pytest.fixture()
def addon(monkeypatch, tmp_path):
    """The add-on registered and enabled (its preferences exist), no backend configured."""
    for name in (settings.ENV_PYTHON, settings.ENV_MODEL, settings.ENV_SERVER_URL, settings.ENV_SERVER_TOKEN):
        monkeypatch.delenv(name, raising=False)
    bpy.ops.wm.read_homefile(use_empty=True)
    irg_blender_addon.register()
    entry = bpy.context.preferences.addons.new()
    entry.module = settings.ADDON_ID
    yield entry.preferences
    tasks_mod.tasks.shutdown()
    tasks_mod.tasks.task = None
    registry.shutdown_all()
    bpy.context.preferences.addons.remove(entry)
    irg_blender_addon.unregister()


@pytest.fixture()
def offline_pip(monkeypatch):
    """pip reads no configuration and no index: all it installs is local."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def standin_project(folder: Path) -> Path:
    for package, init in STANDINS.items():
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text(init)
    (folder / "build_backend.py").write_text(BUILD_BACKEND)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    return folder


# -- settings ----------------------------------------------------------------------------------

def test_server_settings_merge_and_the_token_never_shows(addon, monkeypatch):
    secret = "tok-" + "x" * 30
    monkeypatch.setenv(settings.ENV_SERVER_URL, "http://env-host:7700")
    monkeypatch.setenv(settings.ENV_SERVER_TOKEN, secret)
    s = settings.get_settings()
    assert (s.server_url, s.server_token, s.remote) == ("http://env-host:7700", secret, True)
    assert secret not in repr(s) and "server_token" not in repr(s)
    addon.server_url, addon.server_token = "  http://gpu-box:7701 ", "pref-" + "y" * 30
    s = settings.get_settings()
    assert (s.server_url, s.server_token) == ("http://gpu-box:7701", "pref-" + "y" * 30)
    assert settings.get_settings(server_url="").remote is False  # a keyword still wins
    # What callers passed before the server fields existed works unchanged.
    s = settings.get_settings(mode="direct", max_motion_tokens=4, seed=None, backend_python="/b/python")
    assert (s.mode, s.max_motion_tokens, s.seed, s.backend_python) == ("direct", 4, None, "/b/python")
    assert settings.Settings("/p", "/m").generate_request("a jump")["prompt"] == "a jump"
    assert addon.bl_rna.properties["server_token"].subtype == "PASSWORD"


def test_client_for_picks_the_server_or_the_local_process(addon, tmp_path):
    addon.server_url, addon.server_token = "http://127.0.0.1:9", "t" * 20  # the discard port: nothing listens
    remote = registry.client_for(settings.get_settings())
    assert type(remote).__name__ == "RemoteBackendClient" and "t" * 20 not in repr(remote)
    assert registry.find_client(settings.get_settings()) is remote
    with pytest.raises(BackendError, match="No IRG Motion server answers at http://127.0.0.1:9"):
        remote.wait_ready(10)
    addon.server_url = "ftp://gpu-box"
    with pytest.raises(BackendError, match="http://HOST:PORT"):
        registry.client_for(settings.get_settings())
    addon.server_url = ""
    with pytest.raises(BackendError, match="backend Python is not set"):
        registry.client_for(settings.get_settings())
    assert registry.find_client(settings.get_settings()) is None


def test_default_folder_and_source(addon):
    env = settings.default_env_dir()
    assert env.name == "backend-env" and str(env).startswith(os.environ["BLENDER_USER_RESOURCES"])
    assert settings.default_backend_source() == str(ROOT)  # a checkout installs itself


# -- set up backend ----------------------------------------------------------------------------

def test_set_up_backend_builds_the_environment_and_uses_it(addon, offline_pip, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the new environment must import its own stand-in
    project = standin_project(tmp_path / "project")
    env = tmp_path / "envs" / "backend-env"
    addon.backend_source, addon.torch_build, addon.backend_env_dir = str(project), "skip", str(env)
    assert bpy.ops.irg.setup_backend() == {"FINISHED"}
    task = tasks_mod.tasks.task
    assert task.running and task.job.base_python == sys.executable
    out = draw_prefs(addon)
    assert "Set up backend: Creating environment" in out.text() and "irg.cancel_task" in [
        a[0] for n, a, _ in out.calls if n == "operator"]
    assert not bpy.ops.irg.setup_backend.poll() and not bpy.ops.irg.convert_model.poll()
    tasks_mod.wait_task(240)
    assert task.job.state == "done", task.error
    python = env / "bin" / "python"
    assert addon.backend_python == str(python)
    assert task.message.startswith(f"Backend environment ready: {python} (stored in the preferences).")
    ran = subprocess.run([str(python), "-c", "import model_backend; print(model_backend.__version__)"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # not the checkout's
    assert ran.stdout.strip() == "0.1.0-standin"
    assert "Backend environment ready" in draw_prefs(addon).text()

    assert bpy.ops.irg.show_backend_log(source="TASK") == {"FINISHED"}
    log = bpy.data.texts[backend_ui.LOG_TEXTS["TASK"]].as_string()
    assert f"-m venv --prompt backend-env {env}.new" in log and "pip install" in log

    assert bpy.ops.irg.setup_backend() == {"FINISHED"}  # a working environment is only checked
    again = tasks_mod.wait_task(120)
    assert again.job.state == "done" and again is not task
    assert [line for line in again.job.log_tail(100).splitlines() if line.startswith("$ ")][0].split()[2] == "-c"


def test_set_up_backend_refuses_a_bad_source_at_once(addon, tmp_path):
    addon.backend_source, addon.backend_env_dir = str(tmp_path / "nowhere"), str(tmp_path / "env")
    addon.backend_python = "/keep/this/python"
    with pytest.raises(RuntimeError, match=r"The backend source .*nowhere does not exist: choose the IRG Motion"):
        bpy.ops.irg.setup_backend()
    assert tasks_mod.tasks.task.job.state == "failed" and addon.backend_python == "/keep/this/python"
    assert not (tmp_path / "env").exists() and not (tmp_path / "env.new").exists()
    assert "does not exist" in draw_prefs(addon).text()


# -- convert model -----------------------------------------------------------------------------

@pytest.fixture()
def pieces(backend_python, tmp_path) -> dict[str, Path]:
    """What a user downloads, made from a fixture model: checkpoint, base config+tokenizer, VQ-VAE, stats."""
    fx = tmp_path / "fx"
    made = subprocess.run([str(backend_python), "-m", "model_backend", "make-fixture", str(fx), "--seed", "0"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert made.returncode == 0, made.stderr[-2000:]
    base = base_folder(fx, tmp_path / "base")
    shutil.copy(fx / "llm/model.safetensors", tmp_path / "irg_stage2.safetensors")
    return {"checkpoint": tmp_path / "irg_stage2.safetensors", "base": base, "vqvae": fx / "vqvae.safetensors",
            "mean": fx / "mean.npy", "std": fx / "std.npy"}


def test_convert_model_makes_a_folder_and_uses_it(addon, backend_python, pieces, tmp_path):
    addon.backend_python = str(backend_python)
    out = tmp_path / "models" / "irg-stage2"
    args = {k: str(v) for k, v in pieces.items()}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RuntimeError, match="exists and is not empty"):
        bpy.ops.irg.convert_model(**args, out_dir=str(tmp_path / "full"), dtype="float32")
    assert addon.model_dir == ""
    assert bpy.ops.irg.convert_model(**args, out_dir=str(out), dtype="float32", token="hf_NotReallyUsed") == \
        {"FINISHED"}
    task = tasks_mod.tasks.task
    assert "hf_NotReallyUsed" not in " ".join(task.job.command())
    tasks_mod.wait_task(240)
    assert task.job.state == "done", task.error
    assert addon.model_dir == str(out) and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["stage"] == 2
    assert task.message.startswith(f"Model converted: {out}")
    assert "not the stock Gemma-2-2b-it tokenizer" in task.message  # the converter's warning is passed on
    client.validate_model_dir(addon.model_dir)  # what Generate checks


# -- drawing -----------------------------------------------------------------------------------

def test_preferences_and_backend_panel_draw_in_every_state(addon, tmp_path):
    out = draw_prefs(addon)
    assert {"backend_python", "model_dir", "device", "precision", "server_url", "mode", "max_rounds",
            "max_motion_tokens", "max_trace_tokens", "temperature", "top_p", "seed",
            "show_setup_options"} <= out.props()
    assert "server_token" not in out.props() and "backend_source" not in out.props()
    assert "Set Up Backend" in out.text() and "Convert Model..." in out.text()
    assert "Not running: it starts on the first request." in out.text()
    addon.show_setup_options = True
    out = draw_prefs(addon)
    assert {"backend_source", "torch_build", "torch_index_url", "backend_env_dir"} <= out.props()
    assert f"Default folder: {settings.default_env_dir()}" in out.text()

    addon.server_url, addon.server_token = "http://gpu-box:7700", "s" * 24
    out = draw_prefs(addon)
    assert "server_token" in out.props() and "backend_python" not in out.props()
    assert "s" * 24 not in repr(out.calls)
    panel = draw_backend_panel()
    assert "Server" in panel.text() and "Not running" in panel.text()

    addon.server_url = ""
    panel = draw_backend_panel()
    assert "Local process" in panel.text() and "Start" in panel.text() and "Log" in panel.text()
    addon.mode = "direct"
    addon.max_motion_tokens = 2
    draw(backend_ui.IRG_PT_backend, bpy.context)  # still fine with a half-configured backend
