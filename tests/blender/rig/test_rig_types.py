"""The rigs animators really use, built for real and judged on the bones that deform.

Each rig takes every shared clip (the HumanML3D joints and features, and the BVH files'
own motion read off their imported armatures) and is measured in world space from the
evaluated depsgraph: the directions between the heads of its deforming bones at the
joints against the source joints, after one global yaw alignment, per limb. Rigs: the
rig Rigify generates and its metarig, preset rigs through an FBX round trip (Mixamo with
its prefix at 0.01 scale and Y-up bones, UE5, Auto-Rig Pro), Euler rotation modes,
"inherit rotation" off, a constrained control rig, and a turned and scaled object.
"""
from __future__ import annotations

import bpy
import numpy as np
import pytest

import rig_builds as RB
from irg_blender_addon.anim import actions, compat
from irg_blender_addon.rig import armature as rig, pose, retarget, sampling
from irg_blender_addon.core import skeleton
from model_backend.motion.features import contacts_from_features, features_to_joints
from model_backend.rig_math.footlock import contact_runs

MEAN_LIMIT, MAX_LIMIT = 2.0, 5.0  # degrees per limb: the acceptance bar, and a bound on any frame
STEP = 4  # measure every 4th frame


# Rigify takes several seconds to generate: start it in a child process as soon as this module
# is collected, so it runs while the tests before these do.
RIGIFY_BUILD = RB.rigify_build()


@pytest.fixture(scope="session")
def rigify_blend():
    """Rigify's human metarig and generated rig in a .blend (built once per session in a child process)."""
    path, why = RIGIFY_BUILD.result()
    if why.startswith("bpy"):
        pytest.skip(why)
    assert not why, why
    return path


@pytest.fixture(scope="session")
def source_clips(humanml3d_dir, bvh_dir) -> dict[str, tuple[np.ndarray, float]]:
    """Every shared clip as (joints (T, 22, 3) Blender axes, fps): HumanML3D joints and decoded
    features, and the BVH files' motion sampled off their armatures (at most 160 frames)."""
    clips = {"012314": (skeleton.to_blender(np.load(humanml3d_dir / "012314_joints.npy")).astype(np.float64), 20.0)}
    for name in ("momask_000612", "motion_agent_example"):
        features = np.load(humanml3d_dir / f"{name}_features.npy")
        clips[name] = (skeleton.to_blender(features_to_joints(features)).astype(np.float64), 20.0)
    for path in sorted(bvh_dir.glob("*.bvh")):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_anim.bvh(filepath=str(path))
        obj = bpy.context.object
        fps = bpy.context.scene.render.fps / bpy.context.scene.render.fps_base
        step = 2 if fps > 40 else 1
        start, end = sampling.frame_range(obj.animation_data.action)
        end = min(end, start + 160 * step - 1)
        sampled = sampling.sample_action(obj, frame_start=start, frame_end=end)
        clips[path.stem] = (sampled.joints[::step], fps / step)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return clips


def judge(obj, chains, clips, **options) -> dict[str, dict[str, tuple[float, float]]]:
    """Write each clip onto obj (scene at the clip's rate: one key per source frame) and measure it."""
    out = {}
    for name, (joints, fps) in clips.items():
        bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = int(round(fps)), 1.0
        actions.write_version(obj, joints, fps=fps, prompt=f"clip {name}", **options)
        errors, _ = RB.limb_errors(obj, chains, joints, range(1, len(joints) + 1, STEP))
        out[name] = errors
    worst = {limb: (max(e[limb][0] for e in out.values()), max(e[limb][1] for e in out.values()))
             for limb in next(iter(out.values()))}
    print(f"\n{obj.name} ({retarget.bone_map(obj).preset}), worst over {len(out)} clips, mean / max deg: "
          + ", ".join(f"{limb} {m:.2g} / {x:.2g}" for limb, (m, x) in worst.items()))
    return out


def assert_follows(results, limbs=("spine", "neck", "left leg", "right leg", "left arm", "right arm")):
    for clip, errors in results.items():
        assert set(errors) == set(limbs), (clip, errors)
        for limb, (mean, worst) in errors.items():
            assert mean < MEAN_LIMIT and worst < MAX_LIMIT, (clip, limb, mean, worst)


def rigify_deform_chains(prefix: str) -> list[tuple[str, str, str, str]]:
    return RB.deform_chains({j: prefix + b for j, b in RB.RIGIFY_DEFORM.items()})


# ---------------------------------------------------------------- Rigify

def test_generated_rigify_rig(fresh_scene, rigify_blend, source_clips):
    obj = RB.append_objects(rigify_blend, ("rig",))["rig"]
    assert len(obj.data.bones) == 706
    found = retarget.bone_map(obj)  # detected without help
    assert (found.preset, found.root_bone) == ("rigify_fk", "root")
    results = judge(obj, rigify_deform_chains("DEF-"), source_clips)
    assert_follows(results)
    action = obj.animation_data.action
    keyed = set(actions.keyed_bones(action))
    animator = {"torso", "hips", "chest", "neck", "head", "shoulder.L", "shoulder.R"} | {
        f"{b}_fk.{s}" for b in ("upper_arm", "forearm", "hand", "thigh", "shin", "foot", "toe") for s in "LR"}
    assert animator <= keyed
    # Only controls are keyed: no mechanism (MCH-), original (ORG-) or deform (DEF-) bone.
    assert not any(n.startswith(("MCH-", "ORG-", "DEF-")) for n in keyed)
    # Each limb's IK/FK switch is keyed to FK over the written range.
    curves = {fc.data_path: fc for fc in compat.action_fcurves(action)}
    for limb in ("upper_arm_parent", "thigh_parent"):
        for side in "LR":
            fc = curves[f'pose.bones["{limb}.{side}"]["IK_FK"]']
            assert [tuple(k.co) for k in fc.keyframe_points] == [(action.frame_start, 1.0), (action.frame_end, 1.0)]


def test_rigify_switch_to_ik_and_back_shows_the_fk_pose(fresh_scene, rigify_blend, source_clips):
    obj = RB.append_objects(rigify_blend, ("rig",))["rig"]
    joints, fps = source_clips["012314"]
    bpy.context.scene.render.fps = 20
    action = actions.write_version(obj, joints[:60], fps=fps, prompt="walk")
    names = [f"DEF-{b}.L" for b in ("upper_arm", "forearm", "hand", "thigh", "shin", "foot")]
    frames = (10, 30, 50)
    fk = RB.world_heads(obj, names, frames)
    path = 'pose.bones["upper_arm_parent.L"]["IK_FK"]'
    curve = next(fc for fc in compat.action_fcurves(action) if fc.data_path == path)
    for value, same in ((0.0, False), (1.0, True)):  # the animator switches the arm to IK, then back
        for key in curve.keyframe_points:
            key.co.y = value
        curve.update()
        now = RB.world_heads(obj, names, frames)
        arm = slice(0, 3)
        assert np.allclose(now[:, arm], fk[:, arm], atol=1e-5) == same
        np.testing.assert_allclose(now[:, 3:], fk[:, 3:], atol=1e-6)  # the leg has its own switch


def test_rigify_ik_legs_keep_planted_feet(fresh_scene, rigify_blend, source_clips, humanml3d_dir):
    """IK legs: the feet's IK controls at the ankles, pinned during foot contacts; the knees' poles
    from the solved knees; the legs switched to IK (keyed), the arms still FK."""
    obj = RB.append_objects(rigify_blend, ("rig",))["rig"]
    contacts = contacts_from_features(np.load(humanml3d_dir / "012314_features.npy"))
    joints, fps = source_clips["012314"]
    bpy.context.scene.render.fps = 20
    action = actions.write_version(obj, joints, fps=fps, prompt="walk", ik_legs=True, contacts=contacts)
    assert actions.version_info(action)["ik_legs"] is True
    curves = {fc.data_path: fc for fc in compat.action_fcurves(action)}
    for path, value in (('pose.bones["thigh_parent.L"]["IK_FK"]', 0.0), ('pose.bones["thigh_parent.R"]["pole_vector"]', 1.0),
                        ('pose.bones["upper_arm_parent.L"]["IK_FK"]', 1.0)):
        assert {k.co[1] for k in curves[path].keyframe_points} == {value}
    for bone in ("foot_ik.L", "foot_ik.R", "thigh_ik_target.L", "thigh_ik_target.R"):
        assert f'pose.bones["{bone}"].location' in curves
    flags = pose.joints_to_channels(obj, joints, src_fps=fps, ik_legs=True, contacts=contacts).contacts
    # the contact columns: left ankle, left toe, right ankle, right toe (each foot planted heel and toe)
    heads = RB.world_heads(obj, ["DEF-foot.L", "DEF-toe.L", "DEF-foot.R", "DEF-toe.R"], range(1, len(joints) + 1))
    drift = []
    for column in range(4):
        for start, stop in contact_runs(flags[:, column]):
            run = heads[start:stop, column, :2]
            drift.append(np.linalg.norm(run - run.mean(axis=0), axis=-1).max())
    assert len(drift) >= 8 and max(drift) < 0.01, drift  # metres: the rig is in metres
    errors, _ = RB.limb_errors(obj, rigify_deform_chains("DEF-"), joints, range(1, len(joints) + 1, STEP))
    assert max(mean for limb, (mean, _) in errors.items() if "leg" not in limb) < 0.1
    assert max(mean for limb, (mean, _) in errors.items() if "leg" in limb) < 8.0  # the feet are pinned
    print(f"\nRigify IK legs: planted ankles and toes drift at most {max(drift) * 100:.2f} cm; {errors}")


def test_rigify_metarig(fresh_scene, rigify_blend, source_clips):
    obj = RB.append_objects(rigify_blend, ("metarig",))["metarig"]
    assert len(obj.data.bones) == 159
    assert retarget.bone_map(obj).preset == "rigify_metarig"
    assert_follows(judge(obj, rigify_deform_chains(""), source_clips))


def test_a_plain_armature_with_rigify_names(fresh_scene, source_clips):
    obj = RB.build_preset_rig("rigify_metarig", "Plain")
    found = retarget.bone_map(obj)
    assert found.preset == "rigify_metarig"
    assert_follows(judge(obj, RB.deform_chains(found.mapping), {"012314": source_clips["012314"]}))


def test_a_rigify_rig_that_lost_a_bone_names_its_preset_and_the_joint(fresh_scene, rigify_blend):
    obj = RB.append_objects(rigify_blend, ("rig",))["rig"]
    for name in ("ORG-thigh.L", "DEF-thigh.L"):
        obj.data.bones[name].name = name.replace("thigh", "upper_leg")
    with pytest.raises(ValueError, match=r"Rigify \(generated rig\).*left_hip \(bone 'ORG-thigh.L' not found\)"):
        retarget.bone_map(obj)


# ---------------------------------------------------------------- FBX round trips

@pytest.mark.parametrize("preset_id, options", [
    ("mixamo", {"centimetres": True, "y_up": True}),  # as Mixamo files arrive: mixamorig:, 0.01, Y-up bones
    ("ue5_mannequin", {}),
    ("auto_rig_pro", {}),
])
def test_fbx_round_trip_rigs(fresh_scene, tmp_path, source_clips, preset_id, options):
    obj = RB.fbx_round_trip(RB.build_preset_rig(preset_id, "Exported", **options), tmp_path / "rig.fbx")
    found = retarget.bone_map(obj)  # detected without help after the round trip
    assert found.preset == preset_id and len(found.mapping) == 22
    if preset_id == "mixamo":
        assert all(b.name.startswith("mixamorig:") for b in obj.data.bones)
        assert np.allclose(obj.scale, 0.01) and abs(obj.rotation_euler[0] - np.pi / 2) < 1e-6
    assert_follows(judge(obj, RB.deform_chains(found.mapping), source_clips))


# ---------------------------------------------------------------- rig settings

def test_euler_rotation_modes_are_kept_and_keyed_in_their_order(default_rig, source_clips):
    default_rig.name = "EulerModes"
    modes = RB.set_euler_modes(default_rig)
    clips = {k: source_clips[k] for k in ("012314", "mixamo_rig_30fps") if k in source_clips}
    assert_follows(judge(default_rig, RB.deform_chains({j: j for j in rig.JOINT_NAMES}), clips))
    action = default_rig.animation_data.action
    assert {b.name: b.rotation_mode for b in default_rig.pose.bones} == modes
    assert actions.version_info(action)["rotation_mode_changed"] == []
    paths = {fc.data_path.split('"].')[-1] for fc in compat.action_fcurves(action)}
    assert "rotation_quaternion" not in paths and "rotation_euler" in paths


def test_inherit_rotation_off(default_rig, source_clips):
    default_rig.name = "InheritRotationOff"
    hinged = ("spine2", "neck", "left_elbow", "right_knee", "left_foot")
    RB.set_hinges(default_rig, hinged)
    assert_follows(judge(default_rig, RB.deform_chains({j: j for j in rig.JOINT_NAMES}),
                         {"012314": source_clips["012314"]}))
    assert all(not default_rig.data.bones[n].use_inherit_rotation for n in hinged)


def test_constrained_rig_keys_the_bones_the_constraints_read(default_rig, source_clips):
    default_rig.name = "Constrained"
    joints = ("spine3", "left_shoulder", "left_elbow", "right_hip", "right_knee", "neck")
    controls = RB.add_control_bones(default_rig, joints)
    assert_follows(judge(default_rig, RB.deform_chains({j: j for j in rig.JOINT_NAMES}),
                         {"012314": source_clips["012314"]}))
    keyed = set(actions.keyed_bones(default_rig.animation_data.action))
    assert set(controls.values()) <= keyed and not set(joints) & keyed
    assert all(len(default_rig.pose.bones[j].constraints) == 1 for j in joints)  # kept


def test_turned_and_scaled_object(default_rig, source_clips):
    default_rig.name = "TurnedScaled"
    default_rig.rotation_euler = (0.0, 0.0, np.radians(90.0))  # the rig faces +X
    default_rig.scale = (1.7, 1.7, 1.7)
    default_rig.location = (3.0, -2.0, 0.5)
    bpy.context.view_layer.update()
    results = judge(default_rig, RB.deform_chains({j: j for j in rig.JOINT_NAMES}),
                    {"012314": source_clips["012314"]})
    assert_follows(results)


# ---------------------------------------------------------------- versions on a Rigify rig

def test_a_rigify_version_survives_save_and_reload_and_goes_onto_another_rig(fresh_scene, rigify_blend,
                                                                             source_clips, tmp_path):
    obj = RB.append_objects(rigify_blend, ("rig",))["rig"]
    joints, fps = source_clips["012314"]
    bpy.context.scene.render.fps = 20
    action = actions.write_version(obj, joints, fps=fps, prompt="walk", tokens=[5, 6, 7])
    name, keyed = action.name, actions.keyed_bones(action)
    before = RB.world_heads(obj, ["DEF-hand.L", "DEF-foot.R", "DEF-spine.006"], (20, 80))
    assert not actions.is_edited(action)
    path = tmp_path / "rigify_version.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    obj = bpy.data.objects["rig"]
    action = bpy.data.actions[name]
    assert obj.animation_data.action == action and actions.versions(obj) == [action]
    info = actions.version_info(action)
    assert (info["preset"], info["tokens"], info["ik_legs"]) == ("rigify_fk", [5, 6, 7], False)
    assert actions.keyed_bones(action) == keyed and not actions.is_edited(action)
    np.testing.assert_allclose(RB.world_heads(obj, ["DEF-hand.L", "DEF-foot.R", "DEF-spine.006"], (20, 80)),
                               before, atol=1e-6)
    # Re-applied onto another rig, the stored source motion lands there too.
    other = RB.build_preset_rig("ue5_mannequin", "UE5")
    copy = actions.apply_version(action, other)
    assert actions.version_info(copy)["parent"] == name and actions.version_info(copy)["preset"] == "ue5_mannequin"
    errors, _ = RB.limb_errors(other, RB.deform_chains(retarget.bone_map(other).mapping), joints,
                               range(1, len(joints) + 1, STEP))
    assert max(mean for mean, _ in errors.values()) < MEAN_LIMIT


def test_hand_edited_keys_are_noticed(default_rig, source_clips):
    joints, fps = source_clips["012314"]
    action = actions.write_version(default_rig, joints[:40], fps=fps, prompt="walk", tokens=[1, 2])
    assert not actions.is_edited(action)
    curve = next(fc for fc in compat.action_fcurves(action) if fc.data_path.endswith('["left_elbow"].rotation_quaternion'))
    curve.keyframe_points[10].co.y += 0.2  # the animator bends the elbow on one frame
    curve.update()
    assert actions.is_edited(action)


@pytest.mark.parametrize("edit", ["handle", "interpolation", "modifier"])
def test_reshaped_curves_without_moved_keys_are_noticed(default_rig, source_clips, edit):
    """Keys left where they were, the curves between them reshaped: still an edit of the motion."""
    joints, fps = source_clips["012314"]
    action = actions.write_version(default_rig, joints[:40], fps=fps, prompt="walk", tokens=[1, 2])
    curve = next(fc for fc in compat.action_fcurves(action) if fc.data_path.endswith('["left_elbow"].rotation_quaternion'))
    key = curve.keyframe_points[10]
    if edit == "handle":
        key.handle_right_type, key.handle_right.y = "FREE", key.handle_right.y + 0.3
    elif edit == "interpolation":
        key.interpolation = "CONSTANT" if key.interpolation != "CONSTANT" else "LINEAR"
    else:
        curve.modifiers.new("NOISE")
    assert actions.is_edited(action)


def test_a_version_fingerprinted_by_keys_only_is_still_read_as_unedited(default_rig, source_clips):
    joints, fps = source_clips["012314"]
    action = actions.write_version(default_rig, joints[:40], fps=fps, prompt="walk", tokens=[1, 2])
    action["irg"]["keys_digest"] = actions.keys_digest(action, shape=False)  # as versions from before were
    assert not actions.is_edited(action)
