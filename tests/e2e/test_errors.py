"""Every way Generate can fail gives ONE clear error in Blender (the operator's report
and the status line) naming the fix, and writes nothing to the scene."""
from __future__ import annotations

import sys

import bpy
import pytest

from irg_blender_addon import api
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.backend.base import BackendError


def press_generate(prompt: str = "a person walks") -> str:
    """Press Generate expecting a refusal; return the report (background bpy raises on ERROR reports)."""
    bpy.context.scene.irg_motion.prompt = prompt
    with pytest.raises(RuntimeError) as err:
        bpy.ops.irg.generate()
    assert jobs.manager.job is None or not jobs.manager.job.running
    return str(err.value)


def status():
    return bpy.context.window_manager.irg_motion


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt_is_refused(scene, counts, prompt):
    before = counts()
    report = press_generate(prompt)
    assert report.count("Error:") == 1 and "The prompt is empty" in report
    assert status().level == "ERROR" and "The prompt is empty" in status().status
    assert counts() == before


def test_missing_backend_python(scene, counts, monkeypatch, tmp_path):
    missing = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setenv("IRG_BACKEND_PYTHON", str(missing))
    before = counts()
    report = press_generate()
    assert report.count("Error:") == 1
    assert str(missing) in report and "Preferences > Add-ons > IRG Motion > Backend Python" in report
    assert "make envs" in report
    assert status().level == "ERROR" and str(missing) in status().status
    assert counts() == before


def test_missing_model_folder(scene, counts, monkeypatch, tmp_path):
    missing = tmp_path / "no-such-model"
    monkeypatch.setenv("IRG_MODEL_DIR", str(missing))
    before = counts()
    report = press_generate()
    assert report.count("Error:") == 1 and str(missing) in report
    assert "make-fixture" in report and "Model Folder" in report
    assert counts() == before


def test_python_that_is_not_the_backend(scene, counts, pump, monkeypatch, no_backends_left):
    # Blender's own Python (this one) has no model_backend: the process dies at start.
    monkeypatch.setenv("IRG_BACKEND_PYTHON", sys.executable)
    before = counts()
    bpy.context.scene.irg_motion.prompt = "a person walks"
    assert bpy.ops.irg.generate() == {"FINISHED"}  # the backend starts, then dies
    job = pump(jobs.manager.job, timeout=60)
    assert job.state == "error"
    assert job.error.startswith(f"The Python at {sys.executable} ")
    # No model_backend at all, or (with the repo on PYTHONPATH) no torch: either way, not the backend.
    assert ("does not have the IRG Motion backend installed" in job.error
            or "lacks torch, so it is not the backend environment" in job.error)
    assert "Backend Python" in job.error and "make envs" in job.error
    assert "Last lines of the backend log" in job.error  # the evidence, once
    assert status().level == "ERROR" and status().status == job.error and not status().running
    assert counts() == before


def test_backend_dying_while_loading_the_model(scene, counts, pump, fixture_model, tmp_path, monkeypatch,
                                               no_backends_left):
    # A copy of the fixture whose weights are garbage: the manifest passes, loading fails.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in fixture_model.rglob("*"):
        target = broken / item.relative_to(fixture_model)
        if item.is_dir():
            target.mkdir(exist_ok=True)
        elif item.suffix == ".safetensors":
            target.write_bytes(b"not a safetensors file")
        else:
            target.write_bytes(item.read_bytes())
    monkeypatch.setenv("IRG_MODEL_DIR", str(broken))
    before = counts()
    bpy.context.scene.irg_motion.prompt = "a person walks"
    assert bpy.ops.irg.generate() == {"FINISHED"}
    job = pump(jobs.manager.job, timeout=120)
    assert job.state == "error"
    assert str(broken) in job.error  # the backend's own message names the folder and what next
    assert status().level == "ERROR" and status().status == job.error
    assert counts() == before

    with pytest.raises(api.GenerationError) as err:  # scripts get the same single message
        api.generate("a person walks", mode="direct", max_motion_tokens=4, timeout=120)
    assert str(broken) in str(err.value)
    assert counts() == before


def test_api_refuses_before_spawning(scene, counts, monkeypatch, tmp_path):
    before = counts()
    with pytest.raises(ValueError, match="The prompt is empty"):
        api.generate("  ")
    with pytest.raises(BackendError, match="does not exist"):
        api.generate("a walk", backend_python=str(tmp_path / "nope"))
    with pytest.raises(TypeError, match="unknown option"):
        api.generate("a walk", speed=3)
    assert counts() == before
