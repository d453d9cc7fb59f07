"""The bone mapping of an armature: detect it, fix it by hand, retarget with it, save it as a
user preset that detection then prefers; the preset option and the panel sections in every state."""
from __future__ import annotations

import json
import os
import types
from pathlib import Path

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.rig import presets, retarget, armature as rig
from irg_blender_addon.ui import generate as generate_ui
from irg_blender_addon.ui import retarget as retarget_ops
from irg_blender_addon.rig import mapping as rig_mapping
from ui_recorder import Recorder, check_calls, fake_context

JOINTS = presets.JOINTS


def drawn(helper, context) -> Recorder:
    """Run a draw helper on a Recorder; every call must be a real UILayout function with real
    keywords and icons, and nothing may have been caught and shown as a failure."""
    rec = Recorder()
    helper(rec, context)
    check_calls(rec)
    assert "Cannot show" not in rec.text(" ") and "Cannot read" not in rec.text(" ")
    return rec


def context_for(active=None):
    """What a panel's draw gets: the real scene and view layer, `active` made the active object."""
    bpy.context.view_layer.objects.active = active
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj == active)
    return fake_context(active)


@pytest.fixture()
def settings(fresh_scene):
    generate_ui.register()  # the Retarget panel is a sub-panel of Generate
    retarget_ops.register()
    yield bpy.context.scene.irg_retarget
    retarget_ops.unregister()
    generate_ui.unregister()


@pytest.fixture()
def user_folder(settings):
    """The user preset folder (in BLENDER_USER_RESOURCES); presets a test saves there are removed after it."""
    folder = rig_mapping.user_preset_folder()
    before = set(folder.glob("*.json"))
    yield folder
    for path in set(folder.glob("*.json")) - before:
        path.unlink()


def import_bvh(path) -> bpy.types.Object:
    bpy.ops.import_anim.bvh(filepath=str(path))
    obj = bpy.context.object
    obj.animation_data_clear()
    return obj


def rows(obj) -> dict:
    return {row.joint: row for row in obj.irg_bone_map.joints}


def keys(action) -> dict:
    out = {}
    for fc in compat.action_fcurves(action):
        co = np.empty(2 * len(fc.keyframe_points), dtype=np.float32)
        fc.keyframe_points.foreach_get("co", co)
        out[(fc.data_path, fc.array_index)] = co
    return out


def test_detect_fix_apply_and_save_as_a_preset(user_folder, settings, bvh_dir, clip_blender):
    path = bvh_dir / "mocapbank_19joint_30fps.bvh"
    if not path.exists():
        pytest.skip(f"{path} not found")
    obj = import_bvh(path)
    bpy.context.scene.render.fps = 20
    source = actions.write_version(obj, clip_blender[:40], fps=20.0, prompt="walk")  # preset detected
    bundled = presets.load_presets()["mocapbank_bvh"]

    assert bpy.ops.irg.detect_mapping() == {"FINISHED"}
    state = obj.irg_bone_map
    assert [r.joint for r in state.joints] == list(JOINTS)
    assert rig_mapping.joint_mapping(obj) == bundled.bones  # 19 joints; spine2 and the toes stay empty
    assert {j for j in JOINTS if not rows(obj)[j].bone} == {"spine2", "left_foot", "right_foot"}
    assert state.base == "mocapbank_bvh" and "All required joints are mapped." in state.report
    assert rig_mapping.mapping_problems(obj) == []
    settings.preset = "mixamo"  # detecting starts from the preset picked, if one is
    assert bpy.ops.irg.detect_mapping() == {"FINISHED"}
    assert state.base == "mixamo" and "Unmapped required joints: spine3 (bone 'mixamorig:Spine2'" in state.report
    settings.preset = "AUTO"
    assert bpy.ops.irg.detect_mapping() == {"FINISHED"} and rig_mapping.joint_mapping(obj) == bundled.bones

    # A required joint cleared: listed in the panel, and applying refuses with the fix, changing nothing.
    settings.preset, settings.show_mapping = "CUSTOM", True
    rows(obj)["left_knee"].bone = ""
    assert rig_mapping.mapping_problems(obj) == ["Required joints not mapped: left_knee."]
    panel = drawn(retarget_ops.draw_mapping, context_for(obj)).text(" ")
    assert "1 problem:" in panel and "Required joints not mapped: left_knee." in panel
    options = drawn(retarget_ops.draw_retarget, context_for(obj)).text(" ")
    assert "bone mapping has 1 problem: see Bone Mapping." in options
    with pytest.raises(RuntimeError, match=r"cannot be used: Required joints not mapped: left_knee\. Fix it in "
                                           r"the IRG Motion panel \(Bone Mapping\)"):
        bpy.ops.irg.apply_version(version=source.name)
    with pytest.raises(RuntimeError, match="fix the mapping first"):
        bpy.ops.irg.save_mapping_preset(name="Broken")
    assert actions.versions(obj) == [source] and list(user_folder.glob("*.json")) == []
    # The wrong side's bone is caught by its name (and as a bone used twice).
    rows(obj)["left_knee"].bone = "RightKnee"
    problems = rig_mapping.mapping_problems(obj)
    assert "left_knee -> 'RightKnee': the bone's name says right side." in problems
    assert "Bone 'RightKnee' is mapped to left_knee, right_knee: a bone can take only one joint." in problems

    # Fixed by hand: the custom mapping retargets exactly like the preset it matches.
    rows(obj)["left_knee"].bone = "LeftKnee"
    assert rig_mapping.mapping_problems(obj) == []
    assert bpy.ops.irg.check_rig() == {"FINISHED"}
    assert "preset custom, 19 of 22 joints mapped" in settings.last_check
    assert bpy.ops.irg.apply_version(version=source.name) == {"FINISHED"}
    custom = obj.animation_data.action
    assert actions.version_info(custom)["preset"] == "custom" and actions.version_info(custom)["parent"] == source.name
    reference = keys(source)
    ours = keys(custom)
    assert ours.keys() == reference.keys() and len(actions.keyed_bones(custom)) == 19
    assert max(np.abs(ours[k] - reference[k]).max() for k in ours) < 1e-5

    # Saved as a user preset: in the user folder, loaded, preferred by detection over the bundled one.
    assert bpy.ops.irg.save_mapping_preset(name="Zed rig") == {"FINISHED"}
    saved = user_folder / "zed_rig.json"
    assert saved.is_file() and Path(os.environ["BLENDER_USER_RESOURCES"]) in saved.resolve().parents
    loaded = presets.load_presets([user_folder])
    assert loaded.errors == [] and not loaded["zed_rig"].bundled
    assert loaded["zed_rig"].bones == rig_mapping.joint_mapping(obj)
    assert loaded["zed_rig"].description == f"Saved by hand from {bundled.name}."
    names = [b.name for b in obj.data.bones]
    found = presets.detect_preset(names, loaded)
    assert found.preset.id == "zed_rig" and found.ok
    assert [(p.id, s) for p, s in found.ranking[:2]] == [("zed_rig", 1.0), ("mocapbank_bvh", 1.0)]
    assert retarget.bone_map(obj, "auto").preset == "zed_rig"  # the add-on's detection sees it too
    assert bpy.ops.irg.detect_mapping() == {"FINISHED"} and obj.irg_bone_map.base == "zed_rig"

    # The preset option lists it; a choice keeps naming its preset when presets are added.
    settings.preset = "zed_rig"
    assert bpy.ops.irg.save_mapping_preset(name="Alpha rig") == {"FINISHED"}  # sorts before Zed
    items = retarget_ops.preset_items()
    ids = [i[0] for i in items]
    assert ids[:2] == ["AUTO", "CUSTOM"] and ids[-2:] == ["alpha_rig", "zed_rig"]
    assert set(ids[2:-2]) == set(presets.load_presets())
    assert len({i[4] for i in items}) == len(items) and items[-1][1] == "Zed rig (user)"
    assert settings.preset == "zed_rig"
    assert rig_mapping.retarget_options(bpy.context)["preset"] == "zed_rig"

    # Bundled ids are refused with the reason; saving the same name again replaces the user's file.
    with pytest.raises(RuntimeError, match="'mocapbank_bvh' is the id of a bundled preset: save under another name"):
        bpy.ops.irg.save_mapping_preset(name="MocapBank BVH")
    assert not (presets.presets_dir() / "mocapbank_bvh.json").read_text().count("Saved by hand")
    assert bpy.ops.irg.save_mapping_preset(name="zed rig") == {"FINISHED"}
    assert sorted(p.name for p in user_folder.glob("*.json")) == ["alpha_rig.json", "zed_rig.json"]
    # A picked user preset whose file is removed: the panel says so, and detection is used meanwhile.
    (user_folder / "zed_rig.json").unlink()
    assert settings.preset == "" and rig_mapping.retarget_options(bpy.context)["preset"] == "auto"
    assert "The rig preset picked before is gone" in drawn(retarget_ops.draw_retarget, context_for(obj)).text(" ")


# Odd names, nothing a preset knows (German, with .L/.R sides), bones in centimetres with random
# rolls, an extra root above the hips and a hat bone under the head.
ODD = {"pelvis": "Becken", "spine1": "Bauch", "spine2": "Brust_a", "spine3": "Brust_b", "neck": "Hals",
       "head": "Kopf"}
for _side, _s in (("left", "L"), ("right", "R")):
    ODD.update({f"{_side}_collar": f"Schluesselbein.{_s}", f"{_side}_shoulder": f"Oberarm.{_s}",
                f"{_side}_elbow": f"Unterarm.{_s}", f"{_side}_wrist": f"Hand.{_s}",
                f"{_side}_hip": f"Oberschenkel.{_s}", f"{_side}_knee": f"Schienbein.{_s}",
                f"{_side}_ankle": f"Fuss.{_s}", f"{_side}_foot": f"Zehen.{_s}"})


def build_odd_rig(name="Seltsam") -> bpy.types.Object:
    joints = rig.default_rest_joints() * 100.0
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    rng = np.random.default_rng(3)
    bpy.ops.object.mode_set(mode="EDIT")
    world = data.edit_bones.new("Welt")
    world.head, world.tail = (0.0, 0.0, 0.0), (0.0, 20.0, 0.0)
    made = {}
    for j, joint in enumerate(JOINTS):
        bone = made[joint] = data.edit_bones.new(ODD[joint])
        child = rig.main_child(j)
        bone.head = joints[j]
        bone.tail = joints[child] if child is not None else joints[j] + (0.0, -5.0, 5.0)
        bone.roll = rng.uniform(-np.pi, np.pi)
        parent = presets.JOINT_PARENTS[joint]
        bone.parent = made[parent] if parent else world
    hat = data.edit_bones.new("Hut")
    hat.head, hat.tail, hat.parent = joints[JOINTS.index("head")] + (0, 0, 15), joints[15] + (0, 0, 25), made["head"]
    bpy.ops.object.mode_set(mode="OBJECT")
    return obj


def test_custom_mapping_retargets_the_clip_onto_odd_names(settings, clip_blender, direction_errors):
    obj = build_odd_rig()
    settings.preset = "CUSTOM"
    with pytest.raises(ValueError, match="has no custom bone mapping: press Detect Mapping"):
        actions.write_version(obj, clip_blender, fps=20.0, prompt="walk", **rig_mapping.retarget_options())
    # Nothing fits; the rows start from the closest preset (Auto-Rig Pro's 'hand.l' in any case) to fix by hand.
    assert bpy.ops.irg.detect_mapping() == {"FINISHED"}
    report = obj.irg_bone_map.report
    assert "No rig preset matches this armature's 24 bones." in report
    assert "The rows start from Auto-Rig Pro deform bones: fix them by hand." in report
    assert len(obj.irg_bone_map.joints) == 22
    assert rig_mapping.joint_mapping(obj) == {"left_wrist": "Hand.L", "right_wrist": "Hand.R"}
    with pytest.raises(ValueError, match="Required joints not mapped: pelvis, spine3, left_hip"):
        actions.write_version(obj, clip_blender, fps=20.0, prompt="walk", **rig_mapping.retarget_options())
    for row in obj.irg_bone_map.joints:
        row.bone = ODD[row.joint]
    assert rig_mapping.mapping_problems(obj) == []

    bpy.context.scene.render.fps = 20
    options = rig_mapping.retarget_options(bpy.context, obj)
    assert options["preset"] == ODD
    action = actions.write_version(obj, clip_blender, fps=20.0, prompt="walk", **options)
    assert actions.version_info(action)["preset"] == "custom"
    assert "Hut" not in actions.keyed_bones(action)
    frames = np.arange(1, len(clip_blender) + 1, 6)
    heads = []
    for f in frames:
        bpy.context.scene.frame_set(int(f))
        heads.append([tuple(obj.pose.bones[ODD[j]].head) for j in JOINTS])
    errors = direction_errors(np.array(heads), clip_blender[frames - 1])
    assert errors.mean() < 2.0, errors.mean(axis=0)
    assert np.median(errors) < 0.5  # the aimed segments land on the clip's directions


def test_draw_helpers_in_every_state(settings):
    settings.show_mapping = True

    def both(context) -> tuple[str, str]:
        return drawn(retarget_ops.draw_mapping, context).text(" "), drawn(retarget_ops.draw_retarget, context).text(" ")

    bare = types.SimpleNamespace(scene=types.SimpleNamespace(), view_layer=None, active_object=None)
    mapping, options = both(bare)
    assert "not registered" in mapping and options == ""

    settings.preset = "CUSTOM"
    mapping, options = both(context_for(None))
    assert "Select an armature to map its bones." in mapping and "Select an armature" in options

    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    bpy.context.collection.objects.link(mesh)
    mapping, _ = both(context_for(mesh))
    assert "The active object 'Cube' is a mesh: select an armature." in mapping

    arm = build_odd_rig()
    mapping, options = both(context_for(arm))
    assert "No bone mapping on Seltsam yet: press Detect Mapping." in mapping
    assert drawn(retarget_ops.draw_mapping, context_for(arm)).operators() == ["irg.detect_mapping",
                                                                              "irg.save_mapping_preset"]
    assert "Seltsam has no bone mapping" in options

    rig_mapping.fill_mapping(arm, dict(ODD, left_knee="Oberarm.R"))
    mapping, options = both(context_for(arm))
    assert "left_knee -> 'Oberarm.R': the bone's name says right side." in mapping
    assert "Bone 'Oberarm.R' is mapped to" in mapping and "has 4 problems: see Bone Mapping." in options
    searched = drawn(retarget_ops.draw_mapping, context_for(arm)).named("prop_search")
    assert len(searched) == 22 and all(args[1:] == ("bone", arm.data, "bones") for args, _ in searched)

    rig_mapping.fill_mapping(arm, ODD)
    mapping, options = both(context_for(arm))
    assert "22 of 22 joints mapped; the mapping can be used." in mapping
    assert "Seltsam: its own bone mapping, 22 of 22 joints." in options
    settings.preset = "AUTO"
    assert "Used when Rig Preset is 'Custom (this rig)'." in both(context_for(arm))[0]

    bpy.ops.object.mode_set(mode="EDIT")
    try:
        assert not bpy.ops.irg.detect_mapping.poll()
        mapping, _ = both(context_for(arm))
        assert "Seltsam is in Edit Mode: switch to Object or Pose Mode to map its bones." in mapping
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")

    settings.show_mapping = False
    collapsed = drawn(retarget_ops.draw_mapping, context_for(arm))
    assert [name for name, _, _ in collapsed.calls] == ["box", "prop"]


def test_presets_are_read_again_only_when_their_files_change(tmp_path):
    first, again = presets.load_presets(), presets.load_presets()
    assert first["mixamo"] is again["mixamo"]  # the bundled JSON was not read twice
    data = presets.load_presets()["mixamo"].to_dict()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dict(data, id="mine", name="One")))
    assert presets.load_presets([tmp_path])["mine"].name == "One"
    path.write_text(json.dumps(dict(data, id="mine", name="Three")))
    assert presets.load_presets([tmp_path])["mine"].name == "Three"
    path.unlink()
    assert "mine" not in presets.load_presets([tmp_path])
