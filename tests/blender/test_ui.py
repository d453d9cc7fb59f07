"""Every panel draws without raising in every state, and shows what that state needs."""
from __future__ import annotations

import sys
import types

import bpy
import numpy as np
import pytest

import irg_blender_addon
from irg_blender_addon import actions, jobs, rig, ui
from irg_blender_addon.prefs import ADDON_ID


class Recorder:
    """A layout stand-in: records prop/operator/label/... calls; every call returns itself."""

    def __init__(self, calls=None):
        self.calls = [] if calls is None else calls

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self
        return record

    def texts(self) -> list[str]:
        return [kw.get("text", "") for name, _, kw in self.calls if name in ("label", "operator")]

    def operators(self) -> list[str]:
        return [args[0] for name, args, _ in self.calls if name == "operator"]

    def operator_texts(self) -> list[str]:
        return [kw.get("text", "") for name, _, kw in self.calls if name == "operator"]


def check_calls(rec: Recorder) -> None:
    """Each recorded call is a real UILayout function with real keyword names and icon names."""
    functions = bpy.types.UILayout.bl_rna.functions
    icons = {i.identifier for i in functions["label"].parameters["icon"].enum_items}
    for name, _, kwargs in rec.calls:
        assert name in functions or hasattr(bpy.types.UILayout, name), f"UILayout has no {name}()"
        if name in functions:
            params = {p.identifier for p in functions[name].parameters}
            assert set(kwargs) <= params, f"{name}() has no {set(kwargs) - params}"
        assert kwargs.get("icon", "NONE") in icons, f"unknown icon {kwargs['icon']}"


def draw(panel_cls, context) -> Recorder:
    panel = types.SimpleNamespace(layout=Recorder())
    panel_cls.draw(panel, context)
    check_calls(panel.layout)
    return panel.layout


def fake_context(active=None):
    return types.SimpleNamespace(
        scene=bpy.context.scene, window_manager=bpy.context.window_manager, view_layer=bpy.context.view_layer,
        preferences=bpy.context.preferences, active_object=active, object=active,
        selected_objects=[active] if active is not None else [], mode="OBJECT")


@pytest.fixture()
def addon(monkeypatch):
    monkeypatch.delenv("IRG_BACKEND_PYTHON", raising=False)
    monkeypatch.delenv("IRG_MODEL_DIR", raising=False)
    bpy.ops.wm.read_homefile(use_empty=True)
    irg_blender_addon.register()
    yield
    jobs.manager.job = None
    irg_blender_addon.unregister()


def all_panels(context) -> dict[str, Recorder]:
    return {cls.__name__: draw(cls, context) for cls in ui.CLASSES}


def joined(rec: Recorder) -> str:
    return "\n".join(rec.texts())


def test_no_armature_no_model(addon):
    out = all_panels(fake_context())
    main = joined(out["IRG_PT_generate"])
    assert "irg.generate" in out["IRG_PT_generate"].operators()
    assert "a default rig will be created" in main
    assert "Backend Python and Model Folder" in main  # what to set, and where
    assert "preferences.addon_show" in out["IRG_PT_generate"].operators()
    assert out["IRG_PT_generate"].__dict__.get("module") == ADDON_ID  # opens this add-on's preferences
    assert "No armature selected." in joined(out["IRG_PT_versions"])
    assert "No reasoning yet." in joined(out["IRG_PT_trace"])


def test_armature_with_versions_and_error_status(addon, monkeypatch, tmp_path):
    monkeypatch.setenv("IRG_BACKEND_PYTHON", sys.executable)
    monkeypatch.setenv("IRG_MODEL_DIR", str(tmp_path))
    arm = rig.ensure_armature(bpy.context)
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    first = actions.write_version(arm, joints, prompt="a walk", round=1)
    second = actions.write_version(arm, joints, prompt="a walk", round=2, parent=first)
    rt = bpy.context.window_manager.irg_motion
    rt.status, rt.level = "The backend process stopped (exit status 1).\nLast lines of the log:\nboom", "ERROR"
    rt.trace, rt.assessment = "Analysis: walk forward " * 20, "Assessment: fine\nRefinement: No refinements needed."
    out = all_panels(fake_context(arm))
    main = joined(out["IRG_PT_generate"])
    assert f"Armature: {arm.name}" in main
    assert "Set " not in main  # backend and model come from the environment
    assert "The backend process stopped (exit status 1)." in main and "boom" in main
    versions = out["IRG_PT_versions"]
    assert versions.operator_texts() == [second.name, first.name]  # newest first
    assert versions.operators() == ["irg.set_active_version"] * 2
    trace = joined(out["IRG_PT_trace"])
    assert "Refinement: No refinements needed." in trace and "Analysis: walk forward" in trace
    assert all(len(t) <= ui.WRAP for t in out["IRG_PT_trace"].texts())


def test_running_job_shows_cancel_and_progress(addon, monkeypatch, tmp_path):
    class Idle:  # a job whose backend never answers: only what draw() reads
        running = True
    monkeypatch.setattr(jobs.manager, "job", Idle())
    rt = bpy.context.window_manager.irg_motion
    rt.status, rt.level, rt.running, rt.progress = "Round 1: 12 motion tokens", "RUNNING", True, 0.25
    out = draw(ui.IRG_PT_generate, fake_context())
    assert out.operators()[0] == "irg.cancel" and "irg.generate" not in out.operators()
    assert any(name == "prop" and args[1] == "progress" for name, args, _ in out.calls)
    assert "Round 1: 12 motion tokens" in joined(out)


def test_draw_survives_unregistered_properties():
    ctx = types.SimpleNamespace(scene=types.SimpleNamespace(), window_manager=types.SimpleNamespace(),
                                active_object=None, object=None, selected_objects=[], view_layer=None)
    assert "not registered" in joined(draw(ui.IRG_PT_generate, ctx))
    assert "No reasoning yet." in joined(draw(ui.IRG_PT_trace, ctx))


def test_preferences_draw(addon):
    from irg_blender_addon.prefs import IRG_AddonPreferences
    layout = Recorder()
    IRG_AddonPreferences.draw(types.SimpleNamespace(layout=layout), bpy.context)
    check_calls(layout)
    drawn = {args[1] for name, args, _ in layout.calls if name == "prop"}
    assert drawn == {"backend_python", "model_dir", "device", "precision", "mode", "max_rounds",
                     "max_motion_tokens", "max_trace_tokens", "temperature", "top_p", "seed"}
