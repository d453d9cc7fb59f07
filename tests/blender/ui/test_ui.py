"""Every panel, menu and list draws without raising in every state, and shows what that state needs."""
from __future__ import annotations

import sys
import types

import bpy
import numpy as np
import pytest

import irg_blender_addon
from irg_blender_addon.anim import actions, compat, ghost
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.ui import generate as generate_ui
from irg_blender_addon.ui import retarget as retarget_ops
from irg_blender_addon.ui import review as review_ui
from irg_blender_addon.ui import thumbnails as thumbnails_ui
from irg_blender_addon.ui import versions as versions_ui
from irg_blender_addon import props
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.core import manifest
from irg_blender_addon.settings import ADDON_ID
from ui_recorder import Recorder, check_calls, draw, fake_context


PANELS = [c for m in (generate_ui, versions_ui, thumbnails_ui, review_ui, retarget_ops) for c in m.CLASSES
          if issubclass(c, bpy.types.Panel)]


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
    """Every panel and menu of the add-on drawn in this context."""
    drawn = {cls.__name__: draw(cls, context) for cls in PANELS}
    drawn["IRG_MT_prompt_presets"] = draw(generate_ui.IRG_MT_prompt_presets, context)
    return drawn


def list_rows(context, armature) -> tuple[list[str], dict[str, Recorder]]:
    """The versions list as Blender would show it: filter_items, then draw_item for each shown row."""
    ul = versions_ui.IRG_UL_versions
    stub = types.SimpleNamespace(filter_name="", bitflag_filter_item=1 << 30)  # Blender's UILST_FLT_ITEM
    flags, order = ul.filter_items(stub, context, bpy.data, "actions")
    assert sorted(order) == list(range(len(bpy.data.actions)))  # a permutation, as Blender requires
    shown = sorted((order[k], a.name) for k, a in enumerate(bpy.data.actions) if flags[k])
    rows = {}
    for _, name in shown:
        rec = Recorder()
        ul.draw_item(stub, context, rec, bpy.data, bpy.data.actions[name], 0, armature, "irg_version_index", 0, 0)
        check_calls(rec)
        rows[name] = rec
    return [name for _, name in shown], rows


def hand_keyed_action(armature, name="hand_walk") -> bpy.types.Action:
    """An Action keyed by hand (Euler rotations on the left elbow), made the active one."""
    bone = armature.pose.bones["left_elbow"]
    bone.rotation_mode = "XYZ"
    anim = armature.animation_data or armature.animation_data_create()
    action = compat.new_action(name)
    compat.assign_action(armature, action)
    for frame, angle in ((1, 0.0), (12, 1.2)):
        bone.rotation_euler = (angle, 0.0, 0.0)
        bone.keyframe_insert("rotation_euler", frame=frame)
    assert anim.action == action
    return action


def test_no_armature_no_model(addon, monkeypatch, tmp_path):
    monkeypatch.setattr(manifest, "default_model_dir", lambda: tmp_path / "no-demo-model")
    out = all_panels(fake_context())
    main = out["IRG_PT_generate"].text()
    assert "irg.generate" in out["IRG_PT_generate"].operators()
    assert "a default rig will be created" in main
    assert "Set Backend Python and Model Folder in" in main  # what to set, and where
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text("{}")
    monkeypatch.setattr(manifest, "default_model_dir", lambda: tmp_path / "demo")
    main = all_panels(fake_context())["IRG_PT_generate"].text()  # the demo model is there: only the backend
    assert "Set Backend Python in" in main and "Model Folder" not in main
    assert "preferences.addon_show" in out["IRG_PT_generate"].operators()
    assert out["IRG_PT_generate"].__dict__.get("module") == ADDON_ID  # opens this add-on's preferences
    assert "No armature selected." in out["IRG_PT_versions"].text()
    assert "No reasoning yet." in out["IRG_PT_trace"].text()
    assert "Select an armature that plays" in out["IRG_PT_review"].text()
    presets = out["IRG_MT_prompt_presets"]
    assert "Everyday motions" in presets.text()
    assert "a person walks forward" in [kw for _, kw in presets.named("operator")][0]["text"]


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
    main = out["IRG_PT_generate"].text()
    assert f"Armature: {arm.name}" in main
    assert "Set " not in main  # backend and model come from the environment
    assert "The backend process stopped (exit status 1)." in main and "boom" in main
    versions = out["IRG_PT_versions"]
    (args, kw), = versions.named("template_list")
    assert args == ("IRG_UL_versions", "", bpy.data, "actions", arm, "irg_version_index")
    assert versions.operators() == ["irg.toggle_keep", "irg.rename_version", "irg.delete_version"]
    assert f"Round 2, generated from {first.name}" in versions.text()  # the playing version's details
    names, rows = list_rows(fake_context(arm), arm)
    assert names == [second.name, first.name]  # newest first
    assert rows[second.name].texts()[:4] == ["", second.name, "R2", "a walk"]
    trace = out["IRG_PT_trace"].text()
    assert "Refinement: No refinements needed." in trace and "Analysis: walk forward" in trace
    assert all(len(t) <= retarget_ops.WRAP for t in out["IRG_PT_trace"].texts())


def test_running_job_shows_cancel_and_progress(addon, monkeypatch, tmp_path):
    class Idle:  # a job whose backend never answers: only what draw() reads
        running = True
    monkeypatch.setattr(jobs.manager, "job", Idle())
    rt = bpy.context.window_manager.irg_motion
    rt.status, rt.level, rt.running, rt.progress = "Round 1: 12 motion tokens", "RUNNING", True, 0.25
    rt.job_kind = "generate"
    out = draw(generate_ui.IRG_PT_generate, fake_context())
    assert out.operators()[0] == "irg.cancel" and "irg.generate" not in out.operators()
    assert [kw for _, kw in out.named("progress")] == [{"factor": 0.25, "type": "BAR", "text": "Generate: 25%"}]
    assert "Round 1: 12 motion tokens" in out.text()
    out = all_panels(fake_context())  # every panel, while a job runs
    assert "irg.critique" not in out["IRG_PT_review"].operators()  # nothing to review: no armature


def test_draw_survives_unregistered_properties():
    ctx = types.SimpleNamespace(scene=types.SimpleNamespace(), window_manager=types.SimpleNamespace(),
                                active_object=None, object=None, selected_objects=[], view_layer=None)
    out = all_panels(ctx)
    assert "not registered" in out["IRG_PT_generate"].text()
    assert "No reasoning yet." in out["IRG_PT_trace"].text()
    assert "No armature selected." in out["IRG_PT_versions"].text()


def test_preferences_draw(addon):
    from irg_blender_addon.ui import prefs
    addons = bpy.context.preferences.addons
    entry = addons.new()
    entry.module = ADDON_ID
    try:
        for url in ("", "http://gpu-box:8765"):  # a local backend, then a studio server
            entry.preferences.server_url = url
            layout = Recorder()
            prefs.draw_preferences(layout, entry.preferences)
            check_calls(layout)
            drawn = {args[1] for name, args, _ in layout.calls if name == "prop"}
            assert {"server_url", "mode", "max_rounds", "max_motion_tokens", "max_trace_tokens", "temperature",
                    "top_p", "seed"} <= drawn
            local = {"backend_python", "model_dir", "device", "precision"}
            assert (("server_token" in drawn and not local & drawn) if url else local <= drawn), drawn
    finally:
        addons.remove(entry)


def test_versions_list_shows_only_this_armatures_versions(addon):
    arm = rig.ensure_armature(bpy.context)
    other = rig.create_default_rig(bpy.context, name="Other")
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    theirs = actions.write_version(other, joints, prompt="their walk")
    bpy.context.view_layer.objects.active = arm
    mine = [actions.write_version(arm, joints, prompt=f"walk {k}", assessment="too slow\nsecond line")
            for k in range(3)]
    hand = hand_keyed_action(arm)
    preview = compat.new_action(generate_jobs.PREVIEW_NAME)
    preview[generate_jobs.PREVIEW_MARK] = True
    jobs.set_meta(mine[1], keep=True)
    names, rows = list_rows(fake_context(arm), arm)
    assert names == [a.name for a in reversed(mine)]  # not theirs, not the hand-keyed one, not the preview
    assert theirs.name not in names and hand.name not in names and preview.name not in names
    texts = rows[mine[0].name].texts()
    assert texts[1:] == [mine[0].name, "R1", "walk 0", "too slow", "", ""]  # one-line assessment, compare, apply
    assert [kw.get("icon") for _, kw in rows[mine[0].name].named("operator")][-1] == "MOD_ARMATURE"
    keep_icons = {n: [kw["icon"] for _, kw in r.named("operator")][0] for n, r in rows.items()}
    assert keep_icons == {mine[0].name: "UNLOCKED", mine[1].name: "LOCKED", mine[2].name: "UNLOCKED"}

    # The playing Action is not a version: no row is active, the panel says how to play one.
    out = all_panels(fake_context(arm))
    assert arm.irg_version_index == bpy.data.actions.find(hand.name)
    assert "The armature plays no version" in out["IRG_PT_versions"].text()
    review = out["IRG_PT_review"].text()
    assert f"{hand.name} (not a version: it is sampled from the rig)" in review
    assert "Type in the prompt what this motion should show." in review
    assert {"irg.critique", "irg.caption", "irg.refine"} <= set(out["IRG_PT_review"].operators())

    # A kept version: its delete button is disabled, and the operator refuses anyway.
    arm.irg_version_index = bpy.data.actions.find(mine[1].name)
    assert arm.animation_data.action == mine[1]
    versions = draw(versions_ui.IRG_PT_versions, fake_context(arm))
    assert "Kept" in versions.operator_texts()
    assert versions.__dict__["enabled"] is False  # the delete button's row
    with pytest.raises(RuntimeError, match="marked Keep"):
        bpy.ops.irg.delete_version(action=mine[1].name)
    assert mine[1].name in bpy.data.actions


def test_clicking_a_row_plays_that_version_and_loads_its_review(addon):
    arm = rig.ensure_armature(bpy.context)
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    first = actions.write_version(arm, joints, prompt="a walk", assessment="arms too low", refinement="raise the arms")
    second = actions.write_version(arm, joints, prompt="a walk", refinement=props.SATISFIED)
    rt = bpy.context.window_manager.irg_motion
    assert arm.irg_version_index == bpy.data.actions.find(second.name)
    arm.irg_version_index = bpy.data.actions.find(first.name)
    assert arm.animation_data.action == first
    assert (rt.review_action, rt.review_assessment, rt.instruction) == (first.name, "arms too low", "raise the arms")
    review = draw(review_ui.IRG_PT_review, fake_context(arm)).text()
    assert "Assessment: arms too low" in review and "needs no refinement" not in review
    assert "Model's proposal" not in review  # the instruction field holds it unchanged
    rt.instruction = "raise the arms and clap"
    review = draw(review_ui.IRG_PT_review, fake_context(arm)).text()
    assert "Model's proposal: raise the arms" in review  # still visible after the animator's edit
    arm.irg_version_index = bpy.data.actions.find(second.name)
    assert rt.review_refinement == props.SATISFIED and rt.instruction == ""  # the animator may still write one
    assert "needs no refinement" in draw(review_ui.IRG_PT_review, fake_context(arm)).text()
    plain = compat.new_action("not_a_version")
    arm.irg_version_index = bpy.data.actions.find(plain.name)  # not a version: ignored
    assert arm.animation_data.action == second


def test_live_preview_and_prompt_text_states(addon):
    arm = rig.ensure_armature(bpy.context)
    preview = compat.new_action(generate_jobs.PREVIEW_NAME)
    preview[generate_jobs.PREVIEW_MARK] = True
    compat.assign_action(arm, preview)
    text = bpy.data.texts.new("long prompt")
    text.write("a person walks forward,\n  then turns around\n\nand waves")
    bpy.context.scene.irg_motion.prompt_text = text
    out = all_panels(fake_context(arm))
    assert "Live preview: wait for the motion to finish." in out["IRG_PT_review"].text()
    assert "No versions yet." in out["IRG_PT_versions"].text()
    main = " ".join(out["IRG_PT_generate"].text().split())
    assert "Prompt from the text 'long prompt'" in main
    assert "a person walks forward, then turns around and waves" in main  # the prompt Generate sends
    assert props.scene_prompt(bpy.context.scene) == "a person walks forward, then turns around and waves"
    bpy.ops.irg.use_prompt(prompt="a person jumps")  # a preset puts the field back in charge
    assert props.scene_prompt(bpy.context.scene) == "a person jumps"


def test_another_kind_of_job_running(addon, monkeypatch):
    class Batch:  # a job of another kind (e.g. a batch bake) that the manager runs: only what draw() reads
        running = True
    monkeypatch.setattr(jobs.manager, "job", Batch())
    arm = rig.ensure_armature(bpy.context)
    hand_keyed_action(arm)
    rt = bpy.context.window_manager.irg_motion
    rt.status, rt.level, rt.running, rt.progress, rt.job_kind = "Baking 2 of 5", "RUNNING", True, 0.4, "batch"
    out = all_panels(fake_context(arm))
    assert [kw["text"] for _, kw in out["IRG_PT_generate"].named("progress")] == ["Batch: 40%"]
    assert out["IRG_PT_review"].__dict__["enabled"] is False  # no Critique / Refine while busy
    assert not bpy.ops.irg.critique.poll() and not bpy.ops.irg.generate.poll() and bpy.ops.irg.cancel.poll()


def test_prompt_presets_files(tmp_path):
    (tmp_path / "a.json").write_text('{"name": "Sports", "prompts": ["a person kicks a ball", " "]}')
    (tmp_path / "b.json").write_text("{not json")
    found = generate_ui.prompt_presets(tmp_path)
    assert found[0] == ("Sports", ["a person kicks a ball"])
    assert found[1][0].startswith("b.json: unreadable") and found[1][1] == []
    assert generate_ui.prompt_presets(tmp_path / "missing") == []


def test_esc_cancels_in_the_3d_view(addon):
    keymaps = bpy.context.window_manager.keyconfigs.addon.keymaps

    def esc_items():
        km = keymaps.get("3D View")
        return [i for i in km.keymap_items if i.idname == "irg.cancel"] if km is not None else []
    # register() installed the entry; installing again keeps one, unregistering removes it.
    assert len(esc_items()) == 1
    generate_ui.register_keymaps()
    items = esc_items()
    assert len(items) == 1 and (items[-1].type, items[-1].value) == ("ESC", "PRESS")
    generate_ui.unregister_keymaps()
    assert esc_items() == []
    generate_ui.register_keymaps()  # leave it as register() did, for the fixture's unregister


def test_thumbnail_popover_compare_and_extend_controls(addon):
    arm = rig.ensure_armature(bpy.context)
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    first = actions.write_version(arm, joints, prompt="a walk")
    second = actions.write_version(arm, joints, prompt="a walk")   # plays
    _names, rows = list_rows(fake_context(arm), arm)
    assert "irg.compare_version" in rows[first.name].operators()       # compare it with the playing one
    assert "irg.compare_version" not in rows[second.name].operators()
    assert [kw.get("icon") for _, kw in rows[first.name].named("label")][0] == "ACTION"  # no strip yet
    popover = draw(thumbnails_ui.IRG_PT_version_thumbnail, fake_context(arm))
    assert "No thumbnail yet: press Rebuild Thumbnails." in popover.text()
    assert {"irg.rebuild_thumbnails", "irg.pack_thumbnails"} <= set(popover.operators())
    assert bpy.ops.irg.compare_version(action=first.name) == {"FINISHED"}
    _names, rows = list_rows(fake_context(arm), arm)
    button = [kw for _, kw in rows[first.name].named("operator") if kw.get("icon", "").startswith("GHOST")]
    assert button[0]["icon"] == "GHOST_ENABLED" and ghost.ghost_armature(arm) is not None
    assert bpy.ops.irg.compare_version(action=first.name) == {"FINISHED"}
    assert ghost.ghosts() == []
    review = draw(review_ui.IRG_PT_review, fake_context(arm))
    assert "irg.extend" in review.operators() and {"extend_prompt", "extend_seconds"} <= review.props()
    with pytest.raises(RuntimeError, match="backend|Python|model"):   # no backend configured: refused, nothing sent
        bpy.ops.irg.extend()
