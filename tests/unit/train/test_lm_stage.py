"""Demo-model LLM stage: one short epoch on a few clips writes a folder the real Engine loads and runs.

The clips are motion tokens the VQ-VAE of a fixture folder gives for motions read from
the shared BVH files (a few windows each, labelled as two made-up walks and runs), so the
whole path runs: BVH -> features -> VQ-VAE codes -> tasks -> training -> folder -> Engine.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from model_backend.llm.engine import Engine
from model_backend.convert.fixture import make_fixture
from model_backend.wire.manifest import read_manifest
from model_backend.train import tasks as T
from model_backend.train.folder import HELDOUT_FILE
from model_backend.train.llm import LLMConfig
from model_backend.train.lm_stage import load_token_clips, run_lm_stage

TINY = LLMConfig(hidden_size=64, num_layers=2, heads=1, kv_heads=1, head_dim=64, intermediate_size=128,
                 epochs=1, examples_per_epoch=48, warmup_steps=2, batch_tokens=4096, eval_examples=8)


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("vq") / "fixture", seed=0)


def bvh_clips(bvh_dir, vq_dir) -> list[T.Clip]:
    """Eight labelled windows of the motion tokens of the shared SMPL BVH capture (fixture VQ-VAE)."""
    from model_backend.motion.bvh import BVH_NAMES, bvh_positions, read_bvh
    from model_backend.vq.codec import MotionCodec
    from model_backend.rig_math.skeleton import HUMANML3D, to_blender

    data = read_bvh(bvh_dir / "smpl22_template.bvh")
    order = [data.names.index(BVH_NAMES[n]) for n in HUMANML3D.joint_names]
    joints = to_blender(bvh_positions(data)[:, order])  # metres, Y up in the file
    codes = MotionCodec.from_dir(vq_dir).encode_joints(joints, data.fps)
    assert len(codes) >= 40
    return [T.Clip(f"smpl-{k}", tuple(codes[4 * k:4 * k + 30]), ("walk", "run")[k % 2], ("normal", "tired")[k // 4],
                   "test" if k >= 6 else "train") for k in range(8)]


def write_tokens(path, clips: list[T.Clip]) -> None:
    lengths = [len(c.codes) for c in clips]
    np.savez(path, names=np.array([c.name for c in clips]), contents=np.array([c.content for c in clips]),
             styles=np.array([c.style for c in clips]), heldout=np.array([c.split != "train" for c in clips]),
             offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
             tokens=np.concatenate([c.codes for c in clips]).astype(np.int16))


def test_one_short_epoch_writes_a_folder_the_engine_runs(bvh_dir, vq_dir, tmp_path):
    clips = bvh_clips(bvh_dir, vq_dir)
    write_tokens(tmp_path / "tokens.npz", clips)
    loaded = load_token_clips(tmp_path / "tokens.npz")
    assert loaded == clips
    folder, summary = run_lm_stage(loaded, vq_dir, tmp_path / "irg-tiny", TINY, progress=False)

    manifest = read_manifest(folder)
    assert manifest["fixture"] is False and manifest["dtype"] == "bfloat16"
    assert manifest["vocabulary"]["labels"]["run"][:2] == ["runs", "run"]
    assert manifest["training"]["steps"] == summary["steps"] > 0
    assert set(summary["held_out_loss"]) <= set(T.TASK_WEIGHTS) and summary["final_loss"] > 0
    held = json.loads((folder / HELDOUT_FILE).read_text())
    assert set(held) == {"walk", "run"} and all(len(v) == 6 for v in held.values())
    licence = (folder / "LICENSE").read_text()
    assert "CC BY-NC 4.0" in licence and "Bandai Namco Research Motion Dataset" in licence
    card = (folder / "README.md").read_text()
    assert "- `run`: runs, run" in card and "make demo-model DATA=" in card
    assert f"{summary['steps']} steps" in card and "| walk | 0 of" in card  # the fixture VQ-VAE shows no walk
    from safetensors import safe_open
    with safe_open(str(folder / "llm" / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}

    engine = Engine(folder, device="cpu", precision="fp32")
    for mode in ("direct", "interleaved"):
        events = []
        engine.generate("a man runs", mode=mode, max_new_tokens=400, emit=events.append, cancel=threading.Event())
        assert events[-1]["event"] == "done"
        motions = [e for e in events if e["event"] == "motion"]
        assert motions and all(len(m["tokens"]) >= 2 for m in motions)
        assert not any("knows only" in w for w in events[-1]["warnings"])
    events = []  # a prompt outside its vocabulary: a clear note, and still a motion
    engine.generate("a person does a backflip", mode="direct", emit=events.append, cancel=threading.Event())
    note = [w for w in events[-1]["warnings"] if "knows only" in w]
    assert note and "run, walk" in note[0] and "names none of them" in note[0]
    assert [e["event"] for e in events].count("motion") == 1


def test_the_same_seed_gives_the_same_weights(bvh_dir, vq_dir, tmp_path):
    clips = bvh_clips(bvh_dir, vq_dir)
    config = LLMConfig(**{**TINY.__dict__, "examples_per_epoch": 12})
    a, _ = run_lm_stage(clips, vq_dir, tmp_path / "a", config, progress=False)
    b, _ = run_lm_stage(clips, vq_dir, tmp_path / "b", config, progress=False)
    assert (a / "llm" / "model.safetensors").read_bytes() == (b / "llm" / "model.safetensors").read_bytes()
    assert (a / "llm" / "tokenizer.json").read_bytes() == (b / "llm" / "tokenizer.json").read_bytes()


def test_labels_file_selects_clips_and_a_label_without_clips_is_named(tmp_path):
    from model_backend.train.lm_stage import read_labels, select_labels

    (tmp_path / "labels.json").write_text(json.dumps({"labels": [{"label": "walk"}, {"label": "bow"}]}))
    labels = read_labels(tmp_path / "labels.json")
    clips = [T.Clip("a", (1, 2), "walk", "normal"), T.Clip("b", (3, 4), "run", "normal"),
             T.Clip("c", (5, 6), "bow", "normal", "test")]
    with pytest.raises(ValueError, match="no training clips of bow"):
        select_labels(clips, labels)
    assert [c.name for c in select_labels(clips, ["walk", "run"])] == ["a", "b"]


def test_command_line_names_a_missing_input(tmp_path, capsys):
    from model_backend.train.cli import main

    code = main(["lm", "--tokens", str(tmp_path / "tokens.npz"), "--vq", str(tmp_path), "--out", str(tmp_path / "m")])
    assert code == 2
    assert "tokens.npz: no motion tokens; run the VQ-VAE stage first" in capsys.readouterr().err
    np.savez(tmp_path / "tokens.npz", tokens=np.zeros(3, np.int16))
    assert main(["lm", "--tokens", str(tmp_path / "tokens.npz"), "--vq", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "lacks offsets, names, contents, styles, heldout" in capsys.readouterr().err


def test_an_existing_folder_that_is_not_a_demo_model_is_never_replaced(tmp_path):
    from model_backend.train.folder import write_model_folder
    from model_backend.wire.manifest import ModelFolderError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelFolderError, match="is not a demo model folder: refusing to overwrite"):
        write_model_folder(tmp_path / "mine", llm=None, generation=None, tokenizer=None, vq_dir=tmp_path,
                           contents=[], styles=[], heldout={}, training={}, seed=0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
