"""Batch bake to NLA against the real backend subprocess and the fixture model: prompt lists,
the operators driven through pump(), strip order, positions and blends, a failing prompt
skipped and listed, Retry Failed, Cancel, a save in the middle of a batch, the scripting
call, and the batch panel drawn in every state."""
from __future__ import annotations

import types

import bpy
import numpy as np
import pytest

from irg_blender_addon.anim import actions, compat
from irg_blender_addon.jobs import batch, base as jobs
from irg_blender_addon.ui import batch as batch_ops
from irg_blender_addon.rig import armature as rig
from ui_recorder import Recorder, draw, fake_context

CSV = """prompt,seed,length
a person walks forward,0,0.8
"a person waves, then bows",1,
a person jumps,2,30
a person turns around,,0.6
a person sits down,4,0.4
"""


@pytest.fixture(scope="module", autouse=True)
def batch_registered(registered_addon):
    """batch_ops on top of the add-on (until irg_blender_addon.register() does it itself)."""
    mine = not hasattr(bpy.types.Scene, "irg_batch")
    if mine:
        batch_ops.register()
    yield
    if mine:
        batch_ops.unregister()


@pytest.fixture()
def fast(addon_prefs):
    """Direct mode, at most 3 motion tokens: each prompt takes a fraction of a second."""
    addon_prefs.mode, addon_prefs.max_motion_tokens = "direct", 3
    addon_prefs.thumbnails = False  # test_batch_of_five_to_nla turns them on for its contact sheet
    return addon_prefs


@pytest.fixture()
def armature(scene):
    scene.render.fps, scene.render.fps_base = 20, 1.0  # one motion token = 4 frames
    arm = rig.create_default_rig(bpy.context)
    bpy.context.view_layer.objects.active = arm
    return arm


def items():
    return bpy.context.scene.irg_batch.items


def statuses() -> list[str]:
    return [it.status for it in items()]


def load_csv(text: str = CSV, name: str = "shots.csv") -> None:
    block = bpy.data.texts.new(name)
    block.from_string(text)
    assert bpy.ops.irg.batch_load_text(text=block.name) == {"FINISHED"}


def bake(pump, **props) -> batch.BatchJob:
    assert bpy.ops.irg.batch_bake(**props) == {"FINISHED"}
    job = jobs.manager.job
    assert isinstance(job, batch.BatchJob)
    return pump(job, timeout=120)


def track(arm, name="IRG Batch"):
    return arm.animation_data.nla_tracks[name]


# -- prompt lists ------------------------------------------------------------------------------

def test_prompt_lists_parse_txt_and_csv_and_name_the_bad_line(tmp_path):
    txt = "# shots for the crowd\n\na person walks | 3 | 2.5\n  a person  jumps  \na person waves | | 1.2s\n"
    assert batch.parse_prompts(txt, "txt") == [
        batch.BatchPrompt("a person walks", 3, 2.5, 3), batch.BatchPrompt("a person jumps", None, None, 4),
        batch.BatchPrompt("a person waves", None, 1.2, 5)]
    rows = batch.parse_prompts(CSV, "csv")
    assert [(r.prompt, r.seed, r.length) for r in rows] == [
        ("a person walks forward", 0, 0.8), ("a person waves, then bows", 1, None), ("a person jumps", 2, 30.0),
        ("a person turns around", None, 0.6), ("a person sits down", 4, 0.4)]
    reordered = batch.parse_prompts("length,prompt\n2,a person runs\n", "csv")
    assert (reordered[0].prompt, reordered[0].length, reordered[0].seed) == ("a person runs", 2.0, None)
    assert [r.prompt for r in batch.parse_prompts("a person walks\na person runs,7\n", "csv")] == \
        ["a person walks", "a person runs"]  # no header: positional columns

    path = tmp_path / "shots.csv"
    path.write_text(CSV, encoding="utf-8")
    assert batch.read_prompt_file(path) == rows
    with pytest.raises(ValueError, match=r"shots.txt line 2: the seed 'x' must be a whole number"):
        (tmp_path / "shots.txt").write_text("a walk\na run | x\n")
        batch.read_prompt_file(tmp_path / "shots.txt")
    with pytest.raises(ValueError, match=r"line 3: the length '-1' must be a number of seconds above 0"):
        batch.parse_prompts("prompt,seed,length\na,1,2\nb,1,-1\n", "csv")
    with pytest.raises(ValueError, match=r"line 2: the prompt is empty"):
        batch.parse_prompts("a walk\n | 3\n", "txt")
    with pytest.raises(ValueError, match=r"unknown column 'speed'"):
        batch.parse_prompts("prompt,speed\na,1\n", "csv")
    with pytest.raises(ValueError, match="holds no prompts"):
        batch.parse_prompts("# nothing\n\n", "txt")
    with pytest.raises(ValueError, match="does not exist"):
        batch.read_prompt_file(tmp_path / "missing.csv")
    assert [batch.length_tokens(s) for s in (0.8, 2.5, 9.4, 10.0)] == [4, 12, 47, 50]  # at most that long
    with pytest.raises(ValueError, match=r"30 s is longer than the longest motion the model makes \(10 s"):
        batch.length_tokens(30)
    with pytest.raises(ValueError, match="shorter than the shortest motion"):
        batch.length_tokens(0.2)


def test_loading_a_bad_list_changes_nothing(scene, tmp_path):
    load_csv("a person walks\na person runs\n", "good.txt")
    before = [it.prompt for it in items()]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seed\na person jumps,1\na person falls,minus one\n")
    with pytest.raises(RuntimeError, match="bad.csv line 3: the seed 'minus one'"):
        bpy.ops.irg.batch_load_file(filepath=str(bad))
    assert [it.prompt for it in items()] == before
    good = tmp_path / "more.txt"
    good.write_text("a person crawls | 5\n")
    assert bpy.ops.irg.batch_load_file(filepath=str(good), replace=False) == {"FINISHED"}
    assert [(it.prompt, it.seed, it.status) for it in items()] == [
        ("a person walks", -1, "PENDING"), ("a person runs", -1, "PENDING"), ("a person crawls", 5, "PENDING")]
    assert len({it.uid for it in items()}) == 3


# -- baking ------------------------------------------------------------------------------------

def test_batch_of_five_to_nla(scene, fast, armature, pump, counts, tmp_path):
    fast.thumbnails = True
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "crowd.blend"))
    load_csv()
    props = scene.irg_batch
    props.track, props.frame_start, props.gap, props.blend_in, props.blend_out = "Crowd", 11, 5, 2.0, 1.5
    assert armature.animation_data is None or armature.animation_data.action is None
    before = counts()
    seen = []

    def record(job):
        if job.running and (not seen or seen[-1] != job.status.split(":")[0]):
            seen.append(job.status.split(":")[0])
    assert bpy.ops.irg.batch_bake() == {"FINISHED"}
    job = jobs.manager.job
    while job.pump():
        record(job)
    assert job.state == "done", job.status
    assert seen == ["1 of 5", "2 of 5", "4 of 5", "5 of 5", "Making the contact sheet..."]  # item 3 failed early
    assert statuses() == ["DONE", "DONE", "FAILED", "DONE", "DONE"]
    failed = items()[2]
    assert "The length 30 s is longer than the longest motion the model makes" in failed.error
    assert failed.action is None and failed.strip == ""
    assert job.failed == [("a person jumps", failed.error)] and job.baked == 4
    rt = bpy.context.window_manager.irg_motion
    assert rt.status.startswith("Baked 4 of 5 prompt(s) onto the track 'Crowd' of IRG_SMPL. 1 failed")
    assert rt.level == "ERROR" and not rt.running and rt.progress == 1.0
    assert counts()["actions"] == before["actions"] + 4 and counts()["objects"] == before["objects"]
    # the contact sheet: beside the .blend, named in the report and on the batch, a row per prompt
    sheet = tmp_path / "crowd_Crowd_contact_sheet.png"
    assert rt.status.endswith(f"Contact sheet: {sheet}.") and props.contact_sheet == str(sheet)
    image = bpy.data.images.load(str(sheet))
    assert image.size[0] > 1000 and image.size[1] > 5 * 120   # a title, then 5 rows of 120 px strips
    bpy.data.images.remove(image)

    strips = list(track(armature, "Crowd").strips)
    done = [it for it in items() if it.status == "DONE"]
    assert [s.name for s in strips] == [actions.slugify(it.prompt) for it in done]  # list order
    assert [s.name for s in strips] == [it.strip for it in done]
    assert [s.action for s in strips] == [it.action for it in done]
    assert strips[0].frame_start == 11
    for prev, nxt in zip(strips, strips[1:]):
        assert nxt.frame_start == prev.frame_end + 5  # end to end, 5 frames apart
    for strip, item in zip(strips, done):
        info = actions.version_info(item.action)
        assert info["prompt"] == item.prompt and info["source"] == "generate"
        assert info["seed"] == (item.seed if item.seed >= 0 else None)
        limit = batch.length_tokens(item.length) if item.length > 0 else fast.max_motion_tokens
        assert 1 <= len(info["tokens"]) <= limit
        assert strip.frame_end - strip.frame_start == item.action.frame_range[1] - item.action.frame_range[0]
        assert (strip.blend_in, strip.blend_out) == (2.0, 1.5)
        assert strip.action_slot is not None and strip.action_slot.target_id_type in ("OBJECT", "UNSPECIFIED")
    assert [s.extrapolation for s in strips] == ["HOLD"] + ["HOLD_FORWARD"] * 3
    assert armature.animation_data.action is None  # the NLA plays
    assert scene.frame_end >= strips[-1].frame_end

    # The NLA really plays each Action at its strip: a pose in the middle of strip 3 is the Action's.
    strip = strips[2]
    frame = int(strip.frame_start + (strip.frame_end - strip.frame_start) // 2)
    scene.frame_set(frame)
    action_frame = strip.action_frame_start + (frame - strip.frame_start)
    curves = {(c.data_path, c.array_index): c for c in compat.action_fcurves(strip.action)}
    bone = armature.pose.bones["left_knee"]
    expected = [curves[('pose.bones["left_knee"].rotation_quaternion', i)].evaluate(action_frame) for i in range(4)]
    assert np.allclose(np.array(bone.rotation_quaternion), expected, atol=1e-4)


def test_retry_failed_reruns_only_failed_items_and_restores_the_active_action(scene, fast, armature, pump):
    idle = actions.write_version(armature, np.zeros((8, 22, 3)) + np.linspace(0, 1, 22)[None, :, None],
                                 prompt="idle pose")
    load_csv("a person walks | 1\n   a person runs | 2\na person jumps | 3 | 30\n", "shots.txt")
    items()[1].prompt = "   "  # typed empty in the list
    job = bake(pump)
    assert job.state == "done" and statuses() == ["DONE", "FAILED", "FAILED"]
    assert "The prompt is empty" in items()[1].error and "30 s is longer" in items()[2].error
    first = items()[0].action
    assert [s.name for s in track(armature).strips] == ["a_person_walks"]
    assert armature.animation_data.action == idle  # the Action from before the batch

    items()[1].prompt, items()[2].length = "a person waves", 0.4
    assert bpy.ops.irg.batch_retry_failed() == {"FINISHED"}
    job = pump(jobs.manager.job, timeout=120)
    assert job.state == "done" and job.total == 2 and job.baked == 2, job.status
    assert statuses() == ["DONE", "DONE", "DONE"] and all(it.error == "" for it in items())
    assert items()[0].action == first  # not baked again
    assert len(actions.version_info(items()[2].action)["tokens"]) <= 2
    strips = list(track(armature).strips)
    assert [s.name for s in strips] == ["a_person_walks", "a_person_waves", "a_person_jumps"]
    assert [s.action for s in strips] == [it.action for it in items()]
    assert armature.animation_data.action == idle
    assert not bpy.ops.irg.batch_retry_failed.poll()  # nothing left to retry


def test_cancel_then_bake_unfinished(scene, fast, armature, pump):
    load_csv("a person walks\na person runs\na person hops\na person kneels\n", "shots.txt")
    assert bpy.ops.irg.batch_bake() == {"FINISHED"}
    job = jobs.manager.job
    while job.pump() and items()[0].status != "DONE":
        pass
    assert bpy.ops.irg.batch_cancel() == {"FINISHED"}
    pump(job, timeout=60)
    assert job.state == "cancelled", job.status
    assert job.status.startswith("Cancelled at 2 of 4: ")
    assert statuses()[0] == "DONE" and statuses()[2:] == ["PENDING", "PENDING"]
    assert statuses()[1] in ("DONE", "CANCELLED")  # the one running when Cancel was pressed
    assert bpy.context.window_manager.irg_motion.level == "CANCELLED"
    unfinished = 4 - statuses().count("DONE")
    job = bake(pump, scope="UNFINISHED")
    assert job.state == "done" and job.total == unfinished and statuses() == ["DONE"] * 4
    assert len(track(armature).strips) == 4


def test_a_save_in_the_middle_of_a_batch_loses_nothing(scene, fast, armature, pump, tmp_path):
    load_csv("a person walks\na person runs\na person hops\na person kneels\n", "shots.txt")
    saved = tmp_path / "mid-batch.blend"
    assert bpy.ops.irg.batch_bake() == {"FINISHED"}
    job = jobs.manager.job
    while job.pump():
        if statuses()[:3] == ["DONE", "DONE", "RUNNING"] and not saved.exists():
            bpy.ops.wm.save_as_mainfile(filepath=str(saved), copy=True)  # Ctrl+S while item 3 bakes
    assert job.state == "done" and saved.exists()
    baked = [(it.prompt, it.action.name, it.strip) for it in items()[:2]]

    bpy.ops.wm.open_mainfile(filepath=str(saved))
    assert statuses() == ["DONE", "DONE", "PENDING", "PENDING"]
    assert [(it.prompt, it.action.name, it.strip) for it in items()[:2]] == baked
    assert items()[2].error.startswith("Interrupted (saved during the bake)")
    arm = bpy.data.objects["IRG_SMPL"]
    assert [s.name for s in track(arm).strips] == [b[2] for b in baked]
    assert bpy.context.scene.irg_batch.armature == arm
    job = bake(pump, scope="UNFINISHED")
    assert job.total == 2 and job.state == "done", job.status
    assert statuses() == ["DONE"] * 4 and len(track(bpy.data.objects["IRG_SMPL"]).strips) == 4


def test_without_an_armature_the_first_motion_makes_one_rig_for_the_batch(scene, fast, pump, counts):
    scene.render.fps = 20
    load_csv("a person walks\na person runs\n", "shots.txt")
    items()[0].length = 50  # fails before anything is made
    before = counts()
    job = bake(pump)
    assert job.state == "done" and statuses() == ["FAILED", "DONE"], job.status
    assert counts()["armatures"] == before["armatures"] + 1 and counts()["objects"] == before["objects"] + 1
    arm = scene.irg_batch.armature
    assert arm is not None and arm.type == "ARMATURE" and job.armature_name == arm.name
    assert [s.name for s in track(arm).strips] == ["a_person_runs"]
    assert arm.animation_data.action is None


def test_refusals_change_nothing(scene, fast, armature, pump, counts, monkeypatch, tmp_path):
    assert not bpy.ops.irg.batch_bake.poll()
    with pytest.raises(ValueError, match="The batch list is empty"):
        batch.start_batch(bpy.context)
    load_csv("a person walks\n", "shots.txt")
    monkeypatch.setenv("IRG_MODEL_DIR", str(tmp_path / "no-model"))
    before = counts()
    with pytest.raises(RuntimeError, match="no-model"):
        bpy.ops.irg.batch_bake()
    assert statuses() == ["PENDING"] and counts() == before and jobs.manager.job is None
    with pytest.raises(ValueError, match="No failed items to retry"):
        batch.start_batch(bpy.context, "FAILED")


def test_bake_batch_for_scripts(scene, armature, backend_python, fixture_model):
    results = batch.bake_batch(armature.name, [("a person walks", 7, 0.4), {"prompt": "a person jumps"},
                                               ("a person waves", None, 99)],
                               track="Script", gap=2, blend_in=1.0, mode="direct", max_motion_tokens=2,
                               backend_python=str(backend_python), model_dir=str(fixture_model), thumbnails=False)
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert [r.prompt for r in results] == ["a person walks", "a person jumps", "a person waves"]
    assert (results[0].seed, results[0].length, results[2].length) == (7, 0.4, 99.0)
    assert "99 s is longer" in results[2].error and results[2].action is None
    assert all(isinstance(r.action, bpy.types.Action) for r in results[:2])
    assert actions.version_info(results[0].action)["seed"] == 7
    strips = list(track(armature, "Script").strips)
    assert [s.name for s in strips] == [r.strip for r in results[:2]] == ["a_person_walks", "a_person_jumps"]
    assert strips[1].frame_start == strips[0].frame_end + 2
    assert all(len(actions.version_info(r.action)["tokens"]) <= 2 for r in results[:2])

    before = [it.prompt for it in items()]
    with pytest.raises(TypeError, match="unknown option"):
        batch.bake_batch(armature, ["a walk"], speed=2)
    with pytest.raises(ValueError, match="prompt 2: the prompt is empty"):
        batch.bake_batch(armature, ["a walk", ""], backend_python=str(backend_python))
    with pytest.raises(ValueError, match="no armature object named 'Nope'"):
        batch.bake_batch("Nope", ["a walk"])
    assert [it.prompt for it in items()] == before  # refused before the list was replaced


# -- the panel ---------------------------------------------------------------------------------

def draw_batch_panel() -> Recorder:
    return draw(batch_ops.IRG_PT_batch, fake_context())


def test_batch_panel_draws_in_every_state(scene, fast, armature, pump):
    empty = draw_batch_panel()
    assert "template_list" in [c[0] for c in empty.calls] and "irg.batch_bake" in empty.operators()
    load_csv()
    scene.irg_batch.active_index = 2
    assert bpy.ops.irg.batch_bake() == {"FINISHED"}
    job = jobs.manager.job
    drawn_running = 0
    while job.pump():
        out = draw_batch_panel()
        if job.running:
            drawn_running += 1
            assert "irg.batch_cancel" in out.operators() and "irg.batch_bake" not in out.operators()
            assert f"{job.position} of 5" in out.text()
    assert drawn_running >= 1
    out = draw_batch_panel()
    assert "Retry Failed (1)" in out.text() and "Failed (1)" in out.text()
    assert "3. a person jumps: The length 30 s is longer" in out.text()
    item_rows = Recorder()
    ul = types.SimpleNamespace()
    for item in items():
        batch_ops.IRG_UL_batch_items.draw_item(ul, bpy.context, item_rows, scene.irg_batch, item, 0, None, "", 0)
    assert "seed 1" in item_rows.text() and "0.8 s" in item_rows.text()
    ctx = types.SimpleNamespace(scene=types.SimpleNamespace(), window_manager=None)
    assert "not registered" in draw(batch_ops.IRG_PT_batch, ctx).text()
