"""`irg-motion` on a fixture model it builds itself: files written, numbers in them, messages, exit codes.

Commands run in-process through `main(argv)` (torch is imported once); the entry
points themselves (`python -m model_backend`, the `irg-motion` script) run as real
subprocesses on the fast, torch-free `inspect`.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model_backend.cli import main
from model_backend.cli.files import read_tokens
from model_backend.wire.manifest import read_manifest
from model_backend.rig_math.skeleton import to_blender


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "model"
    assert main(["make-fixture", str(folder), "--seed", "0"]) == 0
    return folder


@pytest.fixture(scope="module")
def codec(model):
    from model_backend.vq.codec import MotionCodec

    return MotionCodec.from_dir(model)


def test_make_fixture_writes_a_model_folder_and_says_it_is_untrained(tmp_path, capsys):
    assert main(["make-fixture", str(tmp_path / "fx"), "--seed", "1", "--stage", "3"]) == 0
    out = capsys.readouterr().out
    assert f"wrote a fixture model folder to {tmp_path / 'fx'}" in out and "untrained" in out
    assert "llm/model.safetensors" in out and "vqvae.safetensors" in out
    manifest = read_manifest(tmp_path / "fx")
    assert (manifest["stage"], manifest["fixture"], manifest["seed"]) == (3, True, 1)


def test_make_fixture_refuses_a_folder_that_is_not_a_fixture(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    assert main(["make-fixture", str(tmp_path / "mine")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_generate_writes_an_npz_in_humanml3d_axes(model, codec, tmp_path, capsys):
    out = tmp_path / "walk.npz"
    assert main(["generate", "a person walks forward", "--model", str(model), "--out", str(out),
                 "--mode", "direct", "--max-motion-tokens", "6", "--device", "cpu"]) == 0
    with np.load(out, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    assert set(arrays) == {"tokens", "features", "joints", "contacts", "fps", "prompt", "round"}
    tokens = arrays["tokens"]
    assert tokens.dtype == np.int32 and 2 <= len(tokens) <= 6
    t = 4 * len(tokens)
    assert arrays["joints"].shape == (t, 22, 3) and arrays["features"].shape == (t, 263)
    assert arrays["contacts"].shape == (t, 4)
    assert float(arrays["fps"]) == 20.0 and str(arrays["prompt"]) == "a person walks forward"
    assert int(arrays["round"]) == 1
    reference = codec.decode(tokens.tolist())
    np.testing.assert_allclose(arrays["joints"], reference.joints, atol=1e-5)  # Y up, facing +Z, metres
    np.testing.assert_allclose(arrays["features"], reference.features, atol=1e-5)
    report = capsys.readouterr().out
    assert f"wrote {out} (round 1)" in report and "untrained fixture" in report
    assert not list(tmp_path.glob(".walk.npz.*"))  # no temporary file left behind


def test_generate_json_prints_only_the_event_stream(model, tmp_path, capfd):
    out = tmp_path / "jump.npz"
    assert main(["generate", "a man jumps", "--model", str(model), "--out", str(out), "--mode", "direct",
                 "--max-motion-tokens", "5", "--json"]) == 0
    captured = capfd.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("motion") == 1 and set(kinds) == {"motion_tokens", "motion", "done"}
    motion = events[kinds.index("motion")]
    with np.load(out) as data:
        assert data["tokens"].tolist() == motion["tokens"]
    assert f"wrote {out}" in captured.err  # the human summary goes to stderr with --json


def test_generate_version_that_does_not_exist_writes_nothing(model, tmp_path, capsys):
    out = tmp_path / "v.npz"
    status = main(["generate", "a man jumps", "--model", str(model), "--out", str(out), "--mode", "direct",
                   "--max-motion-tokens", "4", "--version", "3"])
    assert status == 1 and not out.exists()
    assert "no round 3 (rounds: 1)" in capsys.readouterr().err


def test_inspect_reports_the_folder_without_torch(model, capsys):
    from safetensors import safe_open

    assert main(["inspect", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    manifest = read_manifest(model)
    assert report["manifest"]["name"] == manifest["name"] and report["manifest"]["fixture"] is True
    with safe_open(str(model / "llm" / "model.safetensors"), "np") as fh:
        params = sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())
    assert report["llm"]["weights"]["parameters"] == params
    assert (report["llm"]["num_hidden_layers"], report["llm"]["hidden_size"]) == (2, 64)
    tok = report["tokenizer"]
    assert tok["motion_start_id"] == manifest["motion_tokens"]["start_id"]
    assert tok["motion_first_id"] == manifest["motion_tokens"]["first_id"]
    assert tok["motion_code_count"] == 512 and tok["matches_manifest"] is True
    assert tok["vocab_size"] == tok["motion_last_id"] + 1 == report["llm"]["vocab_size"]
    sizes = {f["path"]: f["bytes"] for f in report["files"]}
    assert sizes["vqvae.safetensors"] == (model / "vqvae.safetensors").stat().st_size

    assert main(["inspect", str(model)]) == 0
    text = capsys.readouterr().out
    assert f"<Motion_0..511> {tok['motion_first_id']}..{tok['motion_last_id']}" in text
    assert "2 layers, hidden 64" in text and "untrained" in text


def test_entry_points_run_the_same_cli(model, backend_python):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(backend_python).parent / "irg-motion"
    outputs = []
    for cmd in ([str(backend_python), "-m", "model_backend"], [str(script)]):
        done = subprocess.run([*cmd, "inspect", str(model), "--json"], capture_output=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    done = subprocess.run([str(backend_python), "-X", "importtime", "-m", "model_backend", "inspect", str(model)],
                          capture_output=True, env=env, timeout=60)
    assert b" torch" not in done.stderr  # inspect stays fast: no torch import


def test_decode_accepts_lists_and_files(model, codec, tmp_path, capsys):
    tokens = [12, 7, 99, 401, 7]
    (tmp_path / "t.json").write_text(json.dumps({"tokens": tokens}))
    np.save(tmp_path / "t.npy", np.array(tokens, dtype=np.int64))
    (tmp_path / "t.txt").write_text("12 7\n99,401 7\n")
    for spec in ("12,7,99,401,7", "12 7 99 401 7", "[12, 7, 99, 401, 7]"):
        assert read_tokens(spec) == tokens
    for name in ("t.json", "t.npy", "t.txt"):
        assert read_tokens(str(tmp_path / name)) == tokens
    out = tmp_path / "d.npz"
    assert main(["decode", "--model", str(model), "--tokens", str(tmp_path / "t.npy"), "--out", str(out)]) == 0
    with np.load(out) as data:
        assert data["joints"].shape == (20, 22, 3) and float(data["fps"]) == 20.0
        np.testing.assert_allclose(data["joints"], codec.decode(tokens).joints, atol=1e-5)
    assert "5 tokens, 20 frames (1.0 s at 20 fps)" in capsys.readouterr().out


def test_encode_prints_the_vq_vae_tokens_in_either_axis_convention(model, codec, tmp_path, capsys):
    joints = codec.decode([40, 41, 300, 2, 2, 511]).joints  # HumanML3D axes, metres
    np.save(tmp_path / "j.npy", joints)
    np.save(tmp_path / "jb.npy", to_blender(joints))
    expected = codec.encode_joints(to_blender(joints), 20.0)
    assert main(["encode", "--model", str(model), "--joints", str(tmp_path / "j.npy")]) == 0
    assert capsys.readouterr().out.strip() == ",".join(map(str, expected))
    out = tmp_path / "tokens.json"
    assert main(["encode", "--model", str(model), "--joints", str(tmp_path / "jb.npy"), "--axes", "blender",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == expected and len(expected) == 6


def test_refine_with_an_instruction_writes_round_2(model, tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["refine", "a person waves", "--model", str(model), "--tokens", "5,6,7,8",
                 "--instruction", "raise the arm higher", "--form", "stage1", "--max-motion-tokens", "4",
                 "--out", str(out)]) == 0
    with np.load(out) as data:
        assert int(data["round"]) == 2 and 2 <= len(data["tokens"]) <= 4
        assert data["joints"].shape == (4 * len(data["tokens"]), 22, 3)
    assert f"wrote {out}" in capsys.readouterr().out


def test_caption_prints_the_model_text(model, codec, tmp_path, capsys):
    np.save(tmp_path / "j.npy", codec.decode([3, 4, 5]).joints)
    assert main(["caption", "--model", str(model), "--joints", str(tmp_path / "j.npy"),
                 "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.strip()  # the untrained model writes noise, but it writes something


@pytest.mark.parametrize("argv, needle", [
    (["generate", "x", "--model", "{missing}", "--out", "{tmp}/a.npz"], "not found (no such folder)"),
    (["decode", "--model", "{missing}", "--tokens", "1,2", "--out", "{tmp}/a.npz"], "not found (no such folder)"),
    (["inspect", "{tmp}"], "manifest.json is missing"),
    (["decode", "--model", "{model}", "--tokens", "{tmp}/none.npy", "--out", "{tmp}/a.npz"],
     "neither an existing file"),
    (["decode", "--model", "{model}", "--tokens", "1,2", "--out", "{tmp}/no/such/dir/a.npz"], "does not exist"),
    (["encode", "--model", "{model}", "--joints", "{tmp}/none.npy"], "joints file"),
    (["caption", "--model", "{model}", "--joints", "{tmp}/none.npy"], "joints file"),
    (["critique", "x", "--model", "{model}", "--tokens", "3,600"], "codebook indices 0..511"),
    (["serve", "--model", "{model}"], "--stdio"),
])
def test_bad_input_exits_2_with_a_message_naming_it(model, tmp_path, capsys, argv, needle):
    values = {"missing": str(tmp_path / "no-model"), "tmp": str(tmp_path), "model": str(model)}
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith(f"irg-motion {argv[0]}: error:")
    assert not (tmp_path / "a.npz").exists()


def test_wrong_joint_shape_is_refused(model, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((10, 21, 3), np.float32))
    assert main(["encode", "--model", str(model), "--joints", str(tmp_path / "bad.npy")]) == 2
    assert "shape (10, 21, 3); this model needs (frames, 22, 3)" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    assert 'irg-motion generate "a person walks forward and waves"' in capsys.readouterr().out


def _bvh_joints(path: Path) -> tuple[np.ndarray, float]:
    """Positions (T, 22, 3) of a BVH in HumanML3D joint order, by forward kinematics, and its fps."""
    from model_backend.motion.bvh import BVH_NAMES, bvh_positions, read_bvh
    from model_backend.rig_math.skeleton import HUMANML3D

    data = read_bvh(path)
    order = [data.names.index(BVH_NAMES[name]) for name in HUMANML3D.joint_names]
    return bvh_positions(data)[:, order], data.fps


def test_to_bvh_reproduces_real_joints_and_foot_lock_moves_only_legs(humanml3d_dir, tmp_path, capsys):
    joints = np.load(humanml3d_dir / "012314_joints.npy")
    np.save(tmp_path / "j.npy", joints)
    assert main(["to-bvh", str(tmp_path / "j.npy"), "--no-foot-lock", "--out", str(tmp_path / "a.bvh")]) == 0
    positions, fps = _bvh_joints(tmp_path / "a.bvh")
    assert fps == pytest.approx(20.0) and positions.shape == joints.shape
    assert np.abs(positions - joints).max() < 1e-4  # metres: the BVH is the motion, exactly

    np.save(tmp_path / "jb.npy", to_blender(joints))
    assert main(["to-bvh", str(tmp_path / "jb.npy"), "--axes", "blender", "--fps", "30",  # locked by default
                 "--out", str(tmp_path / "b.bvh")]) == 0
    locked, fps = _bvh_joints(tmp_path / "b.bvh")
    assert fps == pytest.approx(30.0)
    legs = [1, 2, 4, 5, 7, 8, 10, 11]  # hips, knees, ankles, feet
    rest = [j for j in range(22) if j not in legs]
    assert np.abs(locked[:, rest] - joints[:, rest]).max() < 1e-4
    assert np.abs(locked[:, legs] - joints[:, legs]).max() > 1e-3
    assert "feet locked" in capsys.readouterr().out


def test_to_bvh_takes_fps_from_a_generated_npz(model, tmp_path):
    out = tmp_path / "m.npz"
    assert main(["decode", "--model", str(model), "--tokens", "1,2,3", "--out", str(out)]) == 0
    assert main(["to-bvh", str(out), "--out", str(tmp_path / "m.bvh")]) == 0
    positions, fps = _bvh_joints(tmp_path / "m.bvh")
    assert fps == pytest.approx(20.0) and positions.shape == (12, 22, 3)


def test_generate_writes_a_bvh_with_feet_locked(model, tmp_path, capsys):
    def run(name: str, *flags: str) -> np.ndarray:
        assert main(["generate", "a person walks", "--model", str(model), "--mode", "direct",
                     "--max-motion-tokens", "6", "--out", str(tmp_path / f"{name}.npz"),
                     "--bvh", str(tmp_path / f"{name}.bvh"), *flags]) == 0
        positions, fps = _bvh_joints(tmp_path / f"{name}.bvh")
        assert fps == pytest.approx(20.0)
        return positions
    locked = run("locked")
    assert "feet locked" in capsys.readouterr().out
    free = run("free", "--no-foot-lock")
    assert "feet locked" not in capsys.readouterr().out
    with np.load(tmp_path / "free.npz") as data:
        assert free.shape == data["joints"].shape
    upper = [0, 3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]  # foot locking moves only the legs
    assert np.abs(locked[:, upper] - free[:, upper]).max() < 1e-4


def test_extend_continues_a_generated_motion_seamlessly(model, codec, tmp_path, capsys):
    source = tmp_path / "walk.npz"
    assert main(["generate", "a person walks", "--model", str(model), "--out", str(source), "--mode", "direct",
                 "--max-motion-tokens", "20", "--device", "cpu"]) == 0
    runs = []
    for name in ("a.npz", "b.npz"):
        out = tmp_path / name
        assert main(["extend", "--model", str(model), "--tokens", str(source), "then he sits down", "--out", str(out),
                     "--seconds", "3", "--mode", "direct", "--device", "cpu"]) == 0
        with np.load(out, allow_pickle=False) as data:
            runs.append({k: data[k] for k in data.files})
    first, second = runs
    np.testing.assert_array_equal(first["tokens"], second["tokens"])      # greedy: the same every time
    with np.load(source, allow_pickle=False) as data:
        walk = data["joints"]
    tail = codec.encode_joints(to_blender(walk[-41:]), 20.0)
    assert first["prefix_tokens"].tolist() == tail == first["tokens"][:10].tolist()
    assert len(first["tokens"]) == 10 + 15 and int(first["seam_frame"]) == len(walk) - 1
    assert first["joints"].shape == (len(walk) - 1 + 4 * 15, 22, 3)
    np.testing.assert_allclose(first["joints"][:len(walk) - 41], walk[:len(walk) - 41], atol=1e-5)
    assert "the new motion starts at frame 79" in capsys.readouterr().out
    assert main(["extend", "--model", str(model), "--tokens", str(source), "more", "--out", str(tmp_path / "c.npz"),
                 "--seconds", "9", "--device", "cpu"]) == 2
    assert "ask for at most 8 s" in capsys.readouterr().err
