"""Versions: naming, bulk keys, metadata, active Action, resampling, atomicity, save/reload."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.rig import pose, armature as rig


def keys(action: bpy.types.Action) -> dict[tuple[str, int], np.ndarray]:
    """(data_path, index) -> (n, 2) keyframe coordinates of every F-Curve."""
    out = {}
    for fc in compat.action_fcurves(action):
        co = np.empty(2 * len(fc.keyframe_points), dtype=np.float32)
        fc.keyframe_points.foreach_get("co", co)
        out[(fc.data_path, fc.array_index)] = co.reshape(-1, 2)
    return out


@pytest.fixture()
def walk(default_rig, rigid_motion):
    """A 40-frame rigid walk of the rest pose (turning half a turn)."""
    return rigid_motion(rig.rest_joint_positions(default_rig), frames=40, turns=0.5)


@pytest.mark.parametrize("prompt, slug", [
    ("Walk forward, then wave!", "walk_forward_then_wave"),
    ("  A person   JUMPS twice. ", "a_person_jumps_twice"),
    ("Café — pirouette №2", "cafe_pirouette_no2"),
    ("!!!", "motion"), ("", "motion"),
    ("a person walks forward slowly and then turns around to wave", "a_person_walks_forward_slowly_and_then"),
    ("x" * 60, "x" * 40),
])
def test_slugify(prompt, slug):
    assert actions.slugify(prompt) == slug
    assert len(slug) <= 40


def test_versions_are_numbered_keyed_in_bulk_and_carry_metadata(default_rig, walk):
    scene = bpy.context.scene
    scene.render.fps = 20
    first = actions.write_version(default_rig, walk, fps=20.0, prompt="Walk forward, then wave!", round=1,
                                  tokens=(5, 6, 7), assessment="too slow", refinement="walk faster",
                                  model="irg-test", seed=2**40 + 3, source="generate",
                                  extra={"mode": "direct", "n": 2, "weights": [0.5, 1.0]})
    assert first.name == "walk_forward_then_wave.v001"
    assert default_rig.animation_data.action == first and default_rig.animation_data.action_slot is not None
    assert first.use_fake_user and first.use_frame_range
    assert tuple(first.frame_range) == (1.0, 40.0) and scene.frame_end == 250  # already covered
    curves = keys(first)
    assert len(curves) == 22 * 4 + 3
    assert all(len(co) == 40 for co in curves.values())  # one key per frame on every channel
    np.testing.assert_array_equal(curves[('pose.bones["pelvis"].location', 0)][:, 0], np.arange(1, 41))
    assert {fc.group.name for fc in compat.action_fcurves(first)} == set(rig.JOINT_NAMES)
    assert all(k.interpolation == "LINEAR" for k in compat.action_fcurves(first)[0].keyframe_points)

    info = actions.version_info(first)
    assert {k: info[k] for k in ("prompt", "round", "tokens", "assessment", "refinement", "model", "seed",
                                 "parent", "source", "slug", "version", "frames", "armature")} == {
        "prompt": "Walk forward, then wave!", "round": 1, "tokens": [5, 6, 7], "assessment": "too slow",
        "refinement": "walk faster", "model": "irg-test", "seed": 2**40 + 3, "parent": "", "source": "generate",
        "slug": "walk_forward_then_wave", "version": 1, "frames": 40, "armature": "IRG_SMPL"}
    assert info["extra"] == {"mode": "direct", "n": 2, "weights": [0.5, 1.0]}
    assert info["fps"] == 20.0 and info["src_fps"] == 20.0 and info["created"].startswith("20")
    assert info["rotation_mode_changed"] == [] and info["armature_id"] == default_rig["irg_rig_id"]

    second = actions.write_version(default_rig, walk[:10], fps=20.0, prompt="walk forward then wave",
                                   round=2, parent=first)
    assert second.name == "walk_forward_then_wave.v002"
    assert actions.version_info(second)["parent"] == first.name and actions.version_info(second)["seed"] is None
    assert default_rig.animation_data.action == second
    assert actions.versions(default_rig) == [first, second]
    assert all(len(co) == 10 for co in keys(second).values())


def test_the_keyed_pose_puts_the_bones_on_the_joints(default_rig, walk, posed_heads):
    bpy.context.scene.render.fps = 20
    actions.write_version(default_rig, walk, fps=20.0, prompt="walk")
    for k in (0, 17, 39):
        np.testing.assert_allclose(posed_heads(default_rig, 1 + k), walk[k], atol=5e-5)  # < 0.05 mm


def test_real_clip_keys_directions_and_root(default_rig, clip_blender, posed_heads, direction_errors):
    scene = bpy.context.scene
    scene.render.fps = 20
    action = actions.write_version(default_rig, clip_blender, fps=20.0, prompt="clip 012314")
    info = actions.version_info(action)
    assert info["frames"] == 170 and tuple(action.frame_range) == (1.0, 170.0)
    scale = info["scale"]
    assert 0.9 < scale < 1.0  # the rig's legs are shorter than the clip's
    errors = []
    for k in range(0, 170, 13):
        heads = posed_heads(default_rig, 1 + k)
        np.testing.assert_allclose(heads[0, :2], clip_blender[k, 0, :2] * scale, atol=1e-4)  # root path
        errors.append(direction_errors(heads, clip_blender[k]))
    assert np.mean(errors) < 2.0 and np.max(errors) < 10.0  # bone directions, degrees


@pytest.mark.parametrize("fps, frames", [(24, 203), (30, 254)])
def test_scene_fps_resampling_keeps_the_duration(default_rig, clip_blender, posed_heads, fps, frames):
    scene = bpy.context.scene
    scene.render.fps, scene.frame_end = fps, 100
    action = actions.write_version(default_rig, clip_blender, fps=20.0, prompt="clip")
    info = actions.version_info(action)
    assert info["frames"] == frames and info["fps"] == fps and info["src_fps"] == 20.0
    start, end = action.frame_range
    assert (start, end) == (1.0, float(frames)) and scene.frame_end == frames  # the scene now covers it
    assert all(len(co) == frames for co in keys(action).values())
    assert abs((end - start) / fps - 169 / 20.0) < 1 / fps
    # At a frame that lands on a source frame (t = 2 s), the root is that frame's pelvis.
    np.testing.assert_allclose(posed_heads(default_rig, 1 + 2 * fps)[0, :2], clip_blender[40, 0, :2] * info["scale"],
                               atol=1e-4)


def test_names_never_overwrite_and_versions_belong_to_their_armature(default_rig, walk):
    other_rig = rig.create_default_rig(bpy.context, name="Other")
    unrelated = bpy.data.actions.new("walk.v001")
    a1 = actions.write_version(default_rig, walk, prompt="walk")
    assert a1.name == "walk.v002" and bpy.data.actions["walk.v001"] == unrelated
    b1 = actions.write_version(other_rig, walk, prompt="walk")
    assert b1.name == "walk.v003"  # v001 and v002 are taken by other Actions
    a2 = actions.write_version(default_rig, walk, prompt="jump")
    a3 = actions.write_version(default_rig, walk, prompt="walk")
    assert (a2.name, a3.name) == ("jump.v001", "walk.v004")
    assert actions.versions(default_rig) == [a1, a2, a3]  # creation order
    assert actions.versions(other_rig) == [b1]
    assert actions.version_info(unrelated) == {}
    default_rig.name = "Renamed"  # identity survives renaming
    assert actions.versions(default_rig) == [a1, a2, a3]
    assert actions.versions(rig.create_default_rig(bpy.context, name="Fresh")) == []


def test_bad_joints_change_nothing(default_rig, walk):
    scene = bpy.context.scene
    first = actions.write_version(default_rig, walk, prompt="walk")
    before = (len(bpy.data.actions), scene.frame_end)
    bad = walk.copy()
    bad[5, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        actions.write_version(default_rig, bad, prompt="walk")
    with pytest.raises(ValueError, match=r"shape \(T, 22, 3\)"):
        actions.write_version(default_rig, walk[:, :20], prompt="walk")
    with pytest.raises(ValueError, match="tokens must be non-negative"):
        actions.write_version(default_rig, walk, prompt="walk", tokens=[-1])
    assert (len(bpy.data.actions), scene.frame_end) == before
    assert default_rig.animation_data.action == first


def test_a_failure_while_keying_removes_the_half_made_action(default_rig, walk, monkeypatch):
    scene = bpy.context.scene
    first = actions.write_version(default_rig, walk, prompt="walk")
    default_rig.pose.bones["left_knee"].rotation_mode = "AXIS_ANGLE"
    names, frame_end = sorted(a.name for a in bpy.data.actions), scene.frame_end
    real = compat.write_keys
    calls = []

    def failing(fcurve, frames, values, interpolation="LINEAR"):
        calls.append(fcurve.data_path)
        if len(calls) == 30:
            raise RuntimeError("disk full (injected)")
        real(fcurve, frames, values, interpolation)

    monkeypatch.setattr(compat, "write_keys", failing)
    long_walk = np.concatenate([walk] * 10)  # 400 frames: would extend the scene
    with pytest.raises(RuntimeError, match="injected"):
        actions.write_version(default_rig, long_walk, prompt="walk")
    assert len(calls) == 30
    assert sorted(a.name for a in bpy.data.actions) == names and "walk.v002" not in bpy.data.actions
    assert default_rig.animation_data.action == first and scene.frame_end == frame_end
    assert default_rig.pose.bones["left_knee"].rotation_mode == "AXIS_ANGLE"  # restored

    monkeypatch.setattr(compat, "write_keys", real)
    second = actions.write_version(default_rig, walk, prompt="walk")
    assert second.name == "walk.v002"
    assert actions.version_info(second)["rotation_mode_changed"] == ["left_knee"]
    assert default_rig.pose.bones["left_knee"].rotation_mode == "QUATERNION"


def test_a_first_version_that_fails_leaves_no_action_and_no_rig_id(default_rig, walk, monkeypatch):
    monkeypatch.setattr(compat, "assign_action", lambda obj, action: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        actions.write_version(default_rig, walk, prompt="walk")
    assert len(bpy.data.actions) == 0 and "irg_rig_id" not in default_rig
    assert default_rig.animation_data is None or default_rig.animation_data.action is None


def test_edit_mode_and_non_armatures_are_refused(default_rig, walk):
    mesh = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    with pytest.raises(ValueError, match="Expected an armature object"):
        actions.write_version(mesh, walk, prompt="walk")
    with pytest.raises(ValueError, match="Expected an armature object"):
        actions.versions(mesh)
    bpy.ops.object.mode_set(mode="EDIT")
    with pytest.raises(ValueError, match="Edit Mode"):
        actions.write_version(default_rig, walk, prompt="walk")
    assert len(bpy.data.actions) == 0 and default_rig.animation_data is None
    assert actions.versions(default_rig) == []  # listing still works (the panel draws in Edit Mode)


def test_update_set_active_and_delete(default_rig, walk):
    a1 = actions.write_version(default_rig, walk, prompt="walk")
    a2 = actions.write_version(default_rig, walk[:20], prompt="walk", round=2)
    actions.update_info(a1, assessment="good", refinement="No refinements needed.")
    info = actions.version_info(a1)
    assert (info["assessment"], info["refinement"], info["prompt"]) == ("good", "No refinements needed.", "walk")
    with pytest.raises(TypeError, match="cannot update version"):
        actions.update_info(a1, version=7)
    with pytest.raises(ValueError, match="not an IRG Motion version"):
        actions.update_info(bpy.data.actions.new("plain"), assessment="x")

    actions.set_active_version(default_rig, a1)
    assert default_rig.animation_data.action == a1 and default_rig.animation_data.action_slot is not None
    actions.set_active_version(default_rig, a2)
    assert default_rig.animation_data.action == a2
    actions.delete_version(a2)
    assert a1.name in bpy.data.actions and "walk.v002" not in bpy.data.actions
    assert default_rig.animation_data.action == a1  # fell back to the latest remaining version
    actions.delete_version(a1)
    assert actions.versions(default_rig) == [] and default_rig.animation_data.action is None


def test_versions_survive_save_and_reload(default_rig, walk, tmp_path):
    a1 = actions.write_version(default_rig, walk, prompt="walk", tokens=[1, 2], seed=7, extra={"mode": "x"})
    a2 = actions.write_version(default_rig, walk[:12], prompt="walk", parent=a1, round=2)
    actions.set_active_version(default_rig, a1)  # a2 is kept only by its fake user
    saved = {a.name: (actions.version_info(a), keys(a)) for a in (a1, a2)}
    path = tmp_path / "versions.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert len(bpy.data.actions) == 0
    bpy.ops.wm.open_mainfile(filepath=str(path))
    arm = bpy.data.objects["IRG_SMPL"]
    found = actions.versions(arm)
    assert [a.name for a in found] == ["walk.v001", "walk.v002"]
    assert arm.animation_data.action == found[0]
    for action in found:
        info, curves = saved[action.name]
        assert actions.version_info(action) == info
        reloaded = keys(action)
        assert reloaded.keys() == curves.keys()
        assert all(np.array_equal(reloaded[k], curves[k]) for k in curves)
    assert actions.version_info(found[1])["parent"] == "walk.v001"


def test_a_version_plays_on_another_armature_with_the_same_bones(default_rig, walk, posed_heads):
    bpy.context.scene.render.fps = 20
    action = actions.write_version(default_rig, walk, fps=20.0, prompt="walk")
    twin = bpy.data.objects.new("Twin", default_rig.data)  # never evaluated yet: no pose
    bpy.context.collection.objects.link(twin)
    assert twin.pose is None
    actions.set_active_version(twin, action)
    assert twin.animation_data.action == action and twin.animation_data.action_slot is not None
    np.testing.assert_allclose(posed_heads(twin, 11), walk[10], atol=5e-5)
    own = actions.write_version(twin, walk[:5], fps=20.0, prompt="walk")
    assert own.name == "walk.v002" and actions.versions(twin) == [own]  # its own history
    assert actions.versions(default_rig) == [action]


def test_presolved_channels_are_keyed_as_the_solve_would_and_checked(default_rig, walk):
    bpy.context.scene.render.fps = 24
    synced = actions.write_version(default_rig, walk, prompt="walk", root_mode="in_place", smoothing=True)
    plan = pose.plan_channels(default_rig, root_mode="in_place")
    channels = pose.solve_channels(plan, walk, smoothing=True)
    given = actions.write_version(default_rig, walk, prompt="walk", root_mode="in_place", smoothing=True,
                                  channels=channels)
    assert given.name == "walk.v002" and default_rig.animation_data.action == given
    ours, theirs = keys(given), keys(synced)
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    info, before = actions.version_info(given), actions.version_info(synced)
    for field in ("preset", "root_mode", "foot_lock", "smoothing", "fps", "frames", "frame_end", "scale"):
        assert info[field] == before[field], field
    assert (info["root_mode"], info["smoothing"], info["foot_lock"]) == ("in_place", True, False)
    np.testing.assert_array_equal(actions.source_motion(given)[0], walk)

    state = (len(bpy.data.actions), default_rig.animation_data.action)
    with pytest.raises(ValueError, match=r"other retarget options: root_mode='in_place' \(given 'root_motion'\), "
                                         r"smoothing=True \(given False\)"):
        actions.write_version(default_rig, walk, prompt="walk", channels=channels)
    with pytest.raises(ValueError, match=r"preset='smpl_default' \(given 'mixamo'\)"):
        actions.write_version(default_rig, walk, prompt="walk", preset="mixamo", root_mode="in_place",
                              smoothing=True, channels=channels)
    default_rig.data.bones["left_wrist"].name = "hand.L"
    with pytest.raises(ValueError, match=r"key bones that armature 'IRG_SMPL' does not have \(left_wrist\)"):
        actions.write_version(default_rig, walk, prompt="walk", root_mode="in_place", smoothing=True,
                              channels=channels)
    default_rig.data.bones["hand.L"].name = "left_wrist"
    with pytest.raises(ValueError, match=r"contacts must have shape \(40, 4\)"):
        actions.write_version(default_rig, walk, prompt="walk", root_mode="in_place", smoothing=True,
                              channels=channels, contacts=np.zeros((5, 4)))
    assert (len(bpy.data.actions), default_rig.animation_data.action) == state  # nothing written


def test_keep_and_caption_are_updatable(default_rig, walk):
    version = actions.write_version(default_rig, walk, prompt="walk")
    assert "keep" not in actions.version_info(version)
    actions.update_info(version, keep=1, caption=42)
    info = actions.version_info(version)
    assert info["keep"] is True and info["caption"] == "42" and info["prompt"] == "walk"
    actions.update_info(version, keep=False)
    assert actions.version_info(version)["keep"] is False and actions.version_info(version)["caption"] == "42"
