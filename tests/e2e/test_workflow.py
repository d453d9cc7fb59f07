"""The animator's daily workflow against the real backend subprocess and the tiny fixture model:
generate, critique, refine with an edited instruction, refine hand-keyed animation, describe
motion, keep / rename / delete, save and reload. Every operator runs as the panel runs it and
every job is driven by pump(), as the UI timer drives it.

The fixture model is untrained: its assessments and captions are noise. What is checked is
the structure: events applied, metadata written, parent links, rounds, nothing left behind."""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon import api
from irg_blender_addon.backend import registry
from irg_blender_addon.jobs import base as jobs
from irg_blender_addon.jobs import generate as generate_jobs
from irg_blender_addon.jobs import generate as generate_jobs
import irg_blender_addon
from irg_blender_addon.rig import armature as rig
from irg_blender_addon.core import protocol

TRACE = 260  # max_trace_tokens that fits a critique / refine trace around a 6-token motion (fast on CPU)


@pytest.fixture()
def review_prefs(addon_prefs):
    """FAST settings with room for a critique trace; no live preview (test_preview.py covers it)."""
    addon_prefs.max_trace_tokens = TRACE
    bpy.context.scene.irg_motion.preview = False
    return addon_prefs


def press(operator, pump, **kwargs) -> jobs.BackendJob:
    """Press a panel button that starts a job, then pump the job until it ends."""
    assert operator(**kwargs) == {"FINISHED"}
    job = jobs.manager.job
    assert job is not None and job.running
    return pump(job)


def hand_keyed_walk(armature, frames: int = 25) -> bpy.types.Action:
    """An Action keyed by hand: legs swinging (Euler), the pelvis moving forward, then made active."""
    action = compat.new_action("hand_walk")
    compat.assign_action(armature, action)
    pose_bones = armature.pose.bones
    for name in ("left_hip", "right_hip", "left_knee"):
        pose_bones[name].rotation_mode = "XYZ"
    for frame in range(1, frames + 1, 4):  # keys on 1, 5, ..., 25
        swing = 0.5 * np.sin(2 * np.pi * (frame - 1) / 16)
        pose_bones["left_hip"].rotation_euler = (swing, 0.0, 0.0)
        pose_bones["right_hip"].rotation_euler = (-swing, 0.0, 0.0)
        pose_bones["left_knee"].rotation_euler = (max(0.0, -swing), 0.0, 0.0)
        pose_bones["pelvis"].location = (0.0, 0.0, 0.05 * frame)  # the pelvis bone's local Z is the front
        for name in ("left_hip", "right_hip", "left_knee"):
            pose_bones[name].keyframe_insert("rotation_euler", frame=frame)
        pose_bones["pelvis"].keyframe_insert("location", frame=frame)
    return action


def test_generate_critique_refine_with_an_edited_instruction_then_describe(scene, review_prefs, pump):
    scene.irg_motion.prompt = "a person walks forward"
    gen = press(bpy.ops.irg.generate, pump)
    assert gen.state == "done", gen.status
    arm = bpy.data.objects[gen.armature_name]
    first = bpy.data.actions[gen.action_names[0]]
    assert arm.animation_data.action == first

    # Critique the selected version: the model's assessment and proposal land in the panel and the metadata.
    critique = press(bpy.ops.irg.critique, pump)
    assert critique.state == "done", critique.status
    assert set(critique.result) == {"assessment", "refinement", "satisfied"}
    assert critique.request()["tokens"] == actions.version_info(first)["tokens"]  # a version sends its tokens
    info = actions.version_info(first)
    assert (info["assessment"], info["refinement"]) == (critique.result["assessment"], critique.result["refinement"])
    rt = bpy.context.window_manager.irg_motion
    assert rt.review_action == first.name and rt.review_assessment == critique.result["assessment"]
    assert rt.review_refinement == critique.result["refinement"]  # shown as the model's proposal
    assert rt.instruction == ("" if critique.result["satisfied"] else critique.result["refinement"])
    assert "Analysis: " in rt.trace and "Round 1: " in rt.assessment  # the live trace reached the panel
    assert rt.level == "DONE" and rt.job_kind == "critique"

    # The animator rewrites the instruction, then refines: a new version, its parent recorded.
    rt.instruction = "raise both arms higher"
    refine = press(bpy.ops.irg.refine, pump)
    assert refine.state == "done", refine.status
    assert refine.request()["instruction"] == "raise both arms higher"
    second = bpy.data.actions[refine.action_names[-1]]
    info = actions.version_info(second)
    assert info["parent"] == first.name and info["round"] == 2 and info["source"] == "refine"
    assert info["prompt"] == "a person walks forward"
    assert info["extra"]["instruction"] == "raise both arms higher" and info["extra"]["instruction_by"] == "user"
    assert 1 <= len(info["tokens"]) <= review_prefs.max_motion_tokens
    assert actions.versions(arm) == [first, second] and arm.animation_data.action == second
    assert rt.level == "DONE" and refine.status.startswith(f"Refined {first.name}")

    # Describe the new version: the caption is shown and kept in its metadata.
    review_prefs.max_trace_tokens = 64  # a caption is free text: keep the untrained model short
    caption = press(bpy.ops.irg.caption, pump)
    assert caption.state == "done", caption.status
    assert caption.caption and actions.version_info(second)["caption"] == caption.caption
    assert rt.caption == caption.caption and rt.review_action == second.name


def test_refine_and_describe_hand_keyed_animation(scene, backend_python, fixture_model, counts):
    fast = dict(backend_python=str(backend_python), model_dir=str(fixture_model), mode="direct",
                max_motion_tokens=6, timeout=120)
    scene.render.fps = 24
    arm = rig.create_default_rig(bpy.context)
    hand = hand_keyed_walk(arm)
    keys_before = {fc.data_path + str(fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
                   for fc in compat.action_fcurves(hand)}
    assert not actions.version_info(hand)
    with pytest.raises(ValueError, match="type in the prompt"):  # not a version: it has no prompt of its own
        api.refine(hand, "walk faster", armature=arm, **fast)

    scene.frame_set(7)
    made = api.refine(hand, "walk faster", armature=arm, prompt="a person walks", max_trace_tokens=TRACE, **fast)
    job = jobs.manager.job
    sent = protocol.decode_array(job.motion["joints"])  # the Action was sampled and sent as joints
    assert sent.shape == (25, 22, 3) and job.motion["fps"] == 24.0  # frames 1..25 of the keys, scene fps
    assert -sent[-1, 0, 1] + sent[0, 0, 1] > 1.0  # the pelvis walked forward, to -Y (24 frames x 5 cm)
    assert scene.frame_current == 7  # sampling gave the frame back
    assert len(made) == 1
    info = actions.version_info(made[0])
    assert info["parent"] == hand.name and info["round"] == 2 and info["source"] == "refine"
    assert info["prompt"] == "a person walks" and info["extra"]["instruction"] == "walk faster"
    assert arm.animation_data.action == made[0]
    after = {fc.data_path + str(fc.array_index): [tuple(k.co) for k in fc.keyframe_points]
             for fc in compat.action_fcurves(hand)}
    assert after == keys_before  # the hand-keyed Action itself is untouched

    actions.set_active_version(arm, made[0])
    before = counts()
    review = api.critique(hand, armature=arm, prompt="a person walks", max_trace_tokens=TRACE, **fast)
    assert set(review) == {"assessment", "refinement", "satisfied"} and isinstance(review["assessment"], str)
    words = api.caption(hand, armature=arm, max_trace_tokens=20, **fast)
    assert isinstance(words, str) and words
    assert counts() == before and not actions.version_info(hand)  # reviewing writes nothing for a non-version
    assert arm.animation_data.action == made[0]  # sampling put the playing version back


def test_keep_rename_delete_save_and_reload(scene, review_prefs, pump, backend_python, fixture_model, tmp_path):
    scene.irg_motion.prompt = "a person jumps"
    gen = press(bpy.ops.irg.generate, pump)
    arm_name = gen.armature_name
    arm = bpy.data.objects[arm_name]
    first = bpy.data.actions[gen.action_names[0]]
    second, = api.refine(first, "jump higher", backend_python=str(backend_python), model_dir=str(fixture_model),
                         max_trace_tokens=TRACE)
    third, = api.refine(second, "land softly", backend_python=str(backend_python), model_dir=str(fixture_model),
                        max_trace_tokens=TRACE)
    assert [actions.version_info(a)["round"] for a in (first, second, third)] == [1, 2, 3]
    words = api.caption(second, max_trace_tokens=20)
    assert bpy.ops.irg.toggle_keep(action=first.name) == {"FINISHED"}

    # Rename: the metadata stays, the child's parent link follows.
    assert bpy.ops.irg.rename_version(action=second.name, name="jump_high") == {"FINISHED"}
    assert second.name == "jump_high" and actions.version_info(second)["caption"] == words
    assert actions.version_info(third)["parent"] == "jump_high"
    with pytest.raises(RuntimeError, match="already exists"):
        bpy.ops.irg.rename_version(action=third.name, name=first.name)

    # Delete: a kept version never goes; another one does, and the armature plays the latest left.
    with pytest.raises(RuntimeError, match="marked Keep"):
        bpy.ops.irg.delete_version(action=first.name)
    third_name = third.name
    assert bpy.ops.irg.delete_version(action=third_name) == {"FINISHED"}
    assert third_name not in bpy.data.actions
    assert actions.versions(arm) == [first, second] and arm.animation_data.action == second
    expected = {a.name: actions.version_info(a) for a in (first, second)}
    first_name = first.name

    path = tmp_path / "workflow.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    registry.shutdown_all()
    bpy.ops.wm.open_mainfile(filepath=str(path))
    assert not jobs.manager.busy() and registry.running_clients() == []  # nothing runs on file load
    arm = bpy.data.objects[arm_name]
    reloaded = actions.versions(arm)
    assert [a.name for a in reloaded] == [first_name, "jump_high"]
    for action in reloaded:
        assert actions.version_info(action) == expected[action.name]
    info = actions.version_info(bpy.data.actions["jump_high"])
    assert not info.get("keep") and info["parent"] == first_name and info["caption"] == words
    assert actions.version_info(bpy.data.actions[first_name])["keep"] is True
    assert arm.animation_data.action.name == "jump_high"
    assert arm.irg_version_index == bpy.data.actions.find("jump_high")
    arm.irg_version_index = bpy.data.actions.find(first_name)  # the list still plays what you click
    assert arm.animation_data.action.name == first_name


def test_each_version_operator_is_one_undo_step(scene):
    arm = rig.create_default_rig(bpy.context)
    joints = np.zeros((8, 22, 3), np.float32) + np.linspace(0, 1, 22)[None, :, None]
    first = actions.write_version(arm, joints, prompt="a walk")
    second = actions.write_version(arm, joints, prompt="a walk", round=2, parent=first)
    names, arm_name = (first.name, second.name), arm.name  # undo replaces every datablock: keep names only
    bpy.ops.ed.undo_push(message="versions made")

    def state():
        found = {a.name: actions.version_info(a) for a in bpy.data.actions}
        return ({n: (i.get("keep", False), i["parent"]) for n, i in found.items()},
                bpy.data.objects[arm_name].animation_data.action.name, bpy.context.scene.irg_motion.prompt)
    start = state()
    classes = {cls.bl_idname: cls for module in irg_blender_addon.feature_modules() for cls in module.CLASSES
               if issubclass(cls, bpy.types.Operator)}
    for idname, kwargs in (("irg.toggle_keep", {"action": names[0]}),
                           ("irg.rename_version", {"action": names[0], "name": "renamed"}),
                           ("irg.delete_version", {"action": names[1]}),
                           ("irg.set_active_version", {"armature": arm_name, "action": names[0]}),
                           ("irg.use_prompt", {"prompt": "a person jumps"})):
        assert {"REGISTER", "UNDO"} <= set(classes[idname].bl_options), idname  # Blender pushes the step
        group, name = idname.split(".")
        assert getattr(getattr(bpy.ops, group), name)(**kwargs) == {"FINISHED"}
        assert state() != start, idname
        bpy.ops.ed.undo_push(message=classes[idname].bl_label)  # what the UI does after an UNDO operator
        bpy.ops.ed.undo()
        assert state() == start, idname  # one step back restores everything the operator changed
    for idname in ("irg.generate", "irg.refine"):  # their versions arrive later: the timer pushes those steps
        assert {"REGISTER", "UNDO"} <= set(classes[idname].bl_options)


def test_review_refusals_write_nothing(scene, review_prefs, counts):
    arm = rig.create_default_rig(bpy.context)
    before = counts()
    with pytest.raises(RuntimeError, match="Nothing to work on"):
        bpy.ops.irg.critique()
    with pytest.raises(RuntimeError, match="No Action named 'missing'"):
        bpy.ops.irg.refine(action="missing")
    hand_keyed_walk(arm)
    with pytest.raises(RuntimeError, match="type in the prompt"):
        bpy.ops.irg.critique()
    rt = bpy.context.window_manager.irg_motion
    assert rt.level == "ERROR" and "type in the prompt" in rt.status
    assert counts()["objects"] == before["objects"] and counts()["actions"] == before["actions"] + 1
    assert jobs.manager.job is None or not jobs.manager.job.running


def test_opening_another_file_mid_stream_leaves_both_files_clean(scene, addon_prefs, pump, counts, tmp_path):
    # What a load_pre handler does when a file opens while a generation streams (jobs.manager.abandon).
    addon_prefs.max_motion_tokens = 24
    scene.irg_motion.preview = True
    arm = rig.create_default_rig(bpy.context)
    before = counts()
    scene.irg_motion.prompt = "a person dances"
    assert bpy.ops.irg.generate() == {"FINISHED"}
    job = jobs.manager.job
    job.preview_interval = 0.0
    while not any(a.get(generate_jobs.PREVIEW_MARK) for a in bpy.data.actions):
        assert job.pump(max_events=1), job.status
        while job.running and job.preview_pending:
            time.sleep(0.002)
            job.pump(max_events=0)
    jobs.manager.abandon()
    assert job.state == "cancelled" and "another file" in job.status
    assert counts() == before and arm.animation_data.action is None  # the preview went, nothing written
    backend = job.client
    again = generate_jobs.start_generation(bpy.context, "a person bows", max_motion_tokens=6)  # late events ignored
    pump(again)
    assert again.state == "done" and again.client is backend and len(again.action_names) == 1


def step_until_solving(job: generate_jobs.GenerateJob, timeout: float = 120.0) -> None:
    """Pump one event at a time until the motion is being solved in the worker (nothing written yet)."""
    deadline = time.monotonic() + timeout
    while not job.version_pending:
        assert job.pump(max_events=1), job.status
        assert time.monotonic() < deadline, job.status
    assert job.action_names == []


@pytest.mark.parametrize("how", ["cancel", "abandon"])
def test_ending_the_job_while_the_version_is_solved_writes_nothing(scene, review_prefs, pump, counts, how):
    arm = rig.create_default_rig(bpy.context)
    before = counts()
    job = generate_jobs.start_generation(bpy.context, "a person waves")
    step_until_solving(job)
    if how == "cancel":
        jobs.manager.cancel()
        pump(job, timeout=60)  # the solved channels and the events after the motion are dropped
    else:
        jobs.manager.abandon()
    assert job.state == "cancelled" and job.action_names == [], job.status
    assert counts() == before and (arm.animation_data is None or arm.animation_data.action is None)
    again = generate_jobs.start_generation(bpy.context, "a person bows")  # late events are ignored
    pump(again)
    assert again.state == "done" and len(again.action_names) == 1, again.status


def test_a_failed_solve_ends_the_job_with_its_reason_and_writes_nothing(scene, review_prefs, pump, counts):
    before = counts()  # no armature: the job makes the default rig, which has no root bone above its hips
    scene.irg_retarget.root_mode = "root_bone"
    job = generate_jobs.start_generation(bpy.context, "a person jumps")
    pump(job)
    assert job.state == "error" and "has no root bone above its hips bone" in job.error, job.status
    assert counts() == before  # no version, and the rig made for it is gone

