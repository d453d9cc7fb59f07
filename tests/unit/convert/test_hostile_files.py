"""Issue 14, findings 7-9: hostile checkpoints and model folders get a clear message and exit
status 2, allocate nothing absurd, read nothing outside the model folder, and leave no
temporary folder behind. Everything runs as the real CLI in a subprocess with its address
space capped (hostile.MEMORY_LIMIT), as a user would run it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import MEMORY_LIMIT, limit_memory
from model_pieces import base_folder
from serve_process import ROOT, backend_env

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> dict[str, Path]:
    """A fixture model and the pieces `convert` takes (checkpoint, base, VQ-VAE, mean, std)."""
    from model_backend.convert.fixture import make_fixture

    root = tmp_path_factory.mktemp("hostile-files")
    fx = make_fixture(root / "fx", seed=0)
    torch.save(load_file(str(fx / "llm/model.safetensors")), root / "irg_stage2.pth")
    torch.save({"net": load_file(str(fx / "vqvae.safetensors"))}, root / "vqvae.pth")
    return {"root": root, "fx": fx, "ckpt": root / "irg_stage2.pth", "vqvae": root / "vqvae.pth",
            "base": base_folder(fx, root / "base"), "mean": fx / "mean.npy", "std": fx / "std.npy"}


def cli(python: Path, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "model_backend", *args], capture_output=True, text=True,
                          timeout=timeout, env=backend_env(), cwd=ROOT, preexec_fn=limit_memory(MEMORY_LIMIT))


def convert_args(p: dict[str, Path], out: Path, **override: Path) -> list[str]:
    given = {"checkpoint": p["ckpt"], "base": p["base"], "vqvae": p["vqvae"], "mean": p["mean"],
             "std": p["std"], **override}
    return ["convert", *[f"--{k}={v}" for k, v in given.items()], f"--out={out}", "--dtype=float32"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".converting-" in p.name)


def assert_clean_refusal(run: subprocess.CompletedProcess, *needles: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "error:" in run.stderr
    for needle in needles:
        assert needle in run.stderr, (needle, run.stderr[-2000:])


# ---------------------------------------------------------------- finding 7: absurd VQ-VAE sizes, temp folders

def test_f7_a_vqvae_declaring_width_20000_is_refused_before_allocating(backend_python, pieces):
    root = pieces["root"]
    huge = {"vqvae.encoder.model.0.weight": torch.zeros(20000, 263, 3)}  # 63 MB on disk
    torch.save(huge, root / "wide_vqvae.pth")
    out_parent = root / "f7"
    out_parent.mkdir()
    run = cli(backend_python, *convert_args(pieces, out_parent / "model", vqvae=root / "wide_vqvae.pth"))
    assert_clean_refusal(run, "width", "20000")
    assert leftovers(out_parent) == [] and not (out_parent / "model").exists()


def test_f7_sigterm_during_convert_leaves_no_temporary_folder(backend_python, pieces):
    """SIGTERM as soon as the temporary folder appears: it is removed and convert exits 143. On a
    loaded machine the conversion may finish first (then the folder is complete): try again."""
    for attempt in range(4):
        out_parent = pieces["root"] / f"f7-term-{attempt}"
        out_parent.mkdir()
        proc = subprocess.Popen([str(backend_python), "-m", "model_backend",
                                 *convert_args(pieces, out_parent / "model")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=backend_env(), cwd=ROOT)
        deadline = time.monotonic() + TIMEOUT_S
        while not leftovers(out_parent) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT_S)
        assert leftovers(out_parent) == []
        if not (out_parent / "model").exists():
            assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()[-2000:]
            return
        assert (out_parent / "model/manifest.json").is_file()  # finished before the signal: complete
    pytest.fail("every conversion finished before SIGTERM arrived")


def test_f7_a_stale_temporary_folder_of_a_dead_run_is_swept_on_the_next_run(backend_python, pieces):
    out_parent = pieces["root"] / "f7-stale"
    out_parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out_parent / f".model.converting-{dead.pid}-abc123"
    (stale / "llm").mkdir(parents=True)
    (stale / "llm/model.safetensors").write_bytes(b"half written")
    run = cli(backend_python, *convert_args(pieces, out_parent / "model"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert leftovers(out_parent) == [] and (out_parent / "model/manifest.json").is_file()
    assert "removed" in run.stderr and stale.name in run.stderr


# ---------------------------------------------------------------- finding 8: tracebacks instead of messages

def test_f8_a_vqvae_whose_net_is_a_tensor_is_a_clear_error(backend_python, pieces):
    torch.save({"net": torch.zeros(3)}, pieces["root"] / "net_tensor.pth")
    out = pieces["root"] / "f8-net" / "model"
    run = cli(backend_python, *convert_args(pieces, out, vqvae=pieces["root"] / "net_tensor.pth"))
    assert_clean_refusal(run, "net_tensor.pth")


def test_f8_an_output_whose_parent_is_a_file_is_a_clear_error(backend_python, pieces):
    blocker = pieces["root"] / "a_file"
    blocker.write_text("not a folder")
    run = cli(backend_python, *convert_args(pieces, blocker / "model"))
    assert_clean_refusal(run, str(blocker))


def test_f8_an_output_in_a_place_that_cannot_be_written_is_a_clear_error(backend_python, pieces):
    run = cli(backend_python, *convert_args(pieces, Path("/proc/irg-motion-test/model")))
    assert_clean_refusal(run, "/proc/irg-motion-test")


def test_f8_bad_input_exits_2_as_the_cli_doc_promises(backend_python, pieces):
    run = cli(backend_python, *convert_args(pieces, pieces["root"] / "f8-missing" / "model",
                                            checkpoint=pieces["root"] / "no_such.pth"))
    assert_clean_refusal(run, "no_such.pth")


# ---------------------------------------------------------------- finding 9: model folders that point outside

def _copy_fixture(p: dict[str, Path], name: str) -> Path:
    import shutil

    folder = p["root"] / name
    shutil.copytree(p["fx"], folder)
    return folder


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _serve_refuses(python: Path, folder: Path, *needles: str) -> None:
    """`serve --stdio` on the folder: one `model_missing` error naming the problem, exit 2, quickly."""
    run = subprocess.run([str(python), "-m", "model_backend", "serve", "--stdio", "--model", str(folder),
                          "--device", "cpu"], input=b"", capture_output=True, timeout=TIMEOUT_S, env=backend_env(),
                         cwd=ROOT, preexec_fn=limit_memory(MEMORY_LIMIT))
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 2 and len(lines) == 1, (run.returncode, lines, run.stderr[-2000:])
    assert lines[0]["event"] == "error" and lines[0]["code"] == "model_missing", lines
    for needle in needles:
        assert needle in lines[0]["message"], (needle, lines[0]["message"])


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_f9_a_manifest_pointing_weights_outside_the_folder_is_refused(backend_python, pieces, where):
    folder = _copy_fixture(pieces, f"f9-{where}")
    outside = pieces["root"] / f"outside-{where}.safetensors"
    (folder / "vqvae.safetensors").rename(outside)
    rel = str(outside) if where == "absolute" else f"../{outside.name}"
    _edit_manifest(folder, lambda m: m["vqvae"].update(file=rel))
    _serve_refuses(backend_python, folder, rel, "inside")


def test_f9_symlinked_weights_that_leave_the_folder_are_refused(backend_python, pieces):
    folder = _copy_fixture(pieces, "f9-symlink")
    outside = pieces["root"] / "outside-llm.safetensors"
    (folder / "llm/model.safetensors").rename(outside)
    os.symlink(outside, folder / "llm/model.safetensors")
    _serve_refuses(backend_python, folder, "llm/model.safetensors", "inside")


def test_f9_absurd_vqvae_depth_in_the_manifest_is_refused_quickly(backend_python, pieces):
    folder = _copy_fixture(pieces, "f9-depth")
    _edit_manifest(folder, lambda m: m["vqvae"].update(depth=100_000))
    _serve_refuses(backend_python, folder, "depth", "100000")


def test_f9_absurd_layer_count_in_the_config_is_refused_quickly(backend_python, pieces):
    folder = _copy_fixture(pieces, "f9-layers")
    config = json.loads((folder / "llm/config.json").read_text())
    config["num_hidden_layers"] = 100_000
    config.pop("layer_types", None)
    (folder / "llm/config.json").write_text(json.dumps(config))
    _serve_refuses(backend_python, folder, "num_hidden_layers", "100000")
