"""End-to-end setup: a tiny fixture model built once per session by the backend's own
Python, the add-on registered once per module (so the backend survives between tests),
and a clean scene for each test."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import bpy
import pytest

import irg_blender_addon
from irg_blender_addon.backend import registry
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.settings import ADDON_ID

# Fast settings for the fixture model: direct mode, a few tokens, greedy.
FAST = {"mode": "direct", "max_motion_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="session")
def fixture_model(backend_python, tmp_path_factory) -> Path:
    """A tiny random model folder (`python -m model_backend make-fixture DIR --seed 0`)."""
    folder = tmp_path_factory.mktemp("irg-e2e") / "fixture-model"
    out = subprocess.run([str(backend_python), "-m", "model_backend", "make-fixture", str(folder), "--seed", "0"],
                         capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert out.returncode == 0 and (folder / "manifest.json").is_file(), \
        f"make-fixture failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return folder


@pytest.fixture(scope="module")
def registered_addon():
    """Register once per test module (the backend then survives between its tests);
    unregister, which stops every backend, at its end."""
    irg_blender_addon.register()
    yield
    irg_blender_addon.unregister()


@pytest.fixture()
def scene(registered_addon, backend_python, fixture_model, monkeypatch):
    """A fresh empty file; the backend and model come from the environment (the lowest-precedence source)."""
    monkeypatch.setenv("IRG_BACKEND_PYTHON", str(backend_python))
    monkeypatch.setenv("IRG_MODEL_DIR", str(fixture_model))
    jobs.manager.job = None
    bpy.ops.wm.read_homefile(use_empty=True)
    yield bpy.context.scene
    if jobs.manager.busy():
        jobs.manager.job.cancel()
        jobs.manager.job.cancel()
    jobs.manager.job = None


@pytest.fixture()
def addon_prefs(scene):
    """The add-on enabled in the preferences, with FAST generation defaults (what the operator reads)."""
    addons = bpy.context.preferences.addons
    entry = addons.new()
    entry.module = ADDON_ID
    for name, value in FAST.items():
        setattr(entry.preferences, name, value)
    yield entry.preferences
    addons.remove(entry)


def pump_until_done(job: generate_jobs.GenerateJob, timeout: float = 300.0) -> generate_jobs.GenerateJob:
    """What the UI timer does, in a loop (timers never run in background mode)."""
    deadline = time.monotonic() + timeout
    while job.pump():
        assert time.monotonic() < deadline, f"job still running after {timeout} s: {job.status}"
        time.sleep(0.01)
    return job


def data_counts() -> dict[str, int]:
    """How many objects, armatures and actions the file holds (to prove nothing was written)."""
    return {"objects": len(bpy.data.objects), "armatures": len(bpy.data.armatures),
            "actions": len(bpy.data.actions)}


@pytest.fixture()
def pump():
    """pump_until_done(job, timeout=300) -> job."""
    return pump_until_done


@pytest.fixture()
def counts():
    """data_counts() -> {objects, armatures, actions}."""
    return data_counts


@pytest.fixture()
def no_backends_left():
    """Stop every backend after the test (for tests that spawn a broken one)."""
    yield
    registry.shutdown_all()
