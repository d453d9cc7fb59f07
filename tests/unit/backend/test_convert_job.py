"""'Convert model...': the real converter in the backend Python, on the pieces of a tiny fixture
model; inputs checked before anything runs; the token only in the environment; cancel."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from irg_blender_addon.backend.convert import ConverterOutput, ConvertJob
from job_runs import pump_to_end, run_job
from model_backend.convert.fixture import make_fixture
from model_backend.wire.manifest import read_manifest
from model_pieces import base_folder

TOKEN = "hf_irgTestTokenThatMustNotLeak"


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> dict[str, Path]:
    """A fixture model split into what a user downloads: checkpoint, base config+tokenizer, VQ-VAE, stats."""
    root = tmp_path_factory.mktemp("convert-job")
    fx = make_fixture(root / "fx", seed=0)
    base = base_folder(fx, root / "base")
    torch.save(load_file(str(fx / "llm/model.safetensors")), root / "irg_stage2.pth")
    torch.save({"net": load_file(str(fx / "vqvae.safetensors"))}, root / "vqvae.pth")
    return {"root": root, "checkpoint": root / "irg_stage2.pth", "base": base, "vqvae": root / "vqvae.pth",
            "mean": fx / "mean.npy", "std": fx / "std.npy"}


def _job(backend_python, p, out: Path, **kw) -> ConvertJob:
    args = {"checkpoint": p["checkpoint"], "base": p["base"], "vqvae": p["vqvae"], "mean": p["mean"],
            "std": p["std"], "out_dir": out, "dtype": "float32", **kw}
    return ConvertJob(str(backend_python), **args)


def _run(job: ConvertJob, timeout: float = 180.0) -> list[tuple[float, str]]:
    """One output line per pump, so every stage is sampled."""
    return run_job(job, timeout, max_lines=1)


def _leftovers(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.converting-*"))


def test_converts_the_fixture_pieces_with_stages_and_progress(backend_python, pieces):
    out = pieces["root"] / "model"
    job = _job(backend_python, pieces, out)
    samples = _run(job)
    assert job.state == "done", job.error
    assert job.result == str(out) and job.error is None
    manifest = read_manifest(out)
    assert manifest["stage"] == 2 and manifest["dataset"] == "HumanML3D" and manifest["dtype"] == "float32"
    assert {s["file"] for s in manifest["sources"]} >= {str(pieces["checkpoint"]), str(pieces["vqvae"])}
    seen = [stage for _, stage in samples]
    expected = ["Starting the converter", "Reading the checkpoint", "Preparing the weights", "Writing the model",
                "Hashing the source files", "Verifying the folder", "Done"]
    positions = [seen.index(stage) for stage in expected]  # every stage shows, in this order
    assert positions == sorted(positions)
    progress = [p for p, _ in samples]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len({round(p, 2) for p in progress}) >= 5
    assert job.summary.startswith("converted in ") and str(out) in job.summary and "stage 2" in job.summary
    assert any("not the stock Gemma-2-2b-it tokenizer" in w for w in job.warnings)
    assert "--stage" not in job.command() and "--token" not in job.command()
    assert not _leftovers(out)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_a_bad_checkpoint_fails_naming_it_and_leaves_nothing(backend_python, pieces, kind):
    bad = pieces["root"] / f"stage2_{kind}.pth"
    data = pieces["checkpoint"].read_bytes()
    bad.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"this is not a checkpoint" * 100)
    out = pieces["root"] / f"model-from-{kind}"
    job = _job(backend_python, pieces, out, checkpoint=bad, stage=2)
    _run(job)
    assert job.state == "failed" and job.result is None
    assert job.error.startswith("Converting the model failed (reading the checkpoint): ")
    if kind == "truncated":  # the converter's own message names the file (garbage: see the report)
        assert str(bad) in job.error.splitlines()[0] and "truncated" in job.error.splitlines()[0]
    else:  # whatever the converter raised, the reason line is there, not a bare exit status
        assert "exit status" not in job.error.splitlines()[0]
    assert "Last lines of the log:" in job.error
    assert not out.exists() and not _leftovers(out)


def test_the_token_goes_only_through_the_environment(backend_python, pieces):
    out = pieces["root"] / "model-from-hub"
    job = _job(backend_python, pieces, out, base="irg-motion-tests/not-cached", token=TOKEN)
    assert all(TOKEN not in arg for arg in job.command())
    assert job.environment()["HF_TOKEN"] == TOKEN
    _run(job)  # conftest keeps the hub offline: the converter says so, naming the id
    assert job.state == "failed"
    assert "irg-motion-tests/not-cached" in job.error and "offline" in job.error
    assert TOKEN not in job.error and TOKEN not in job.log_tail(500)
    assert not out.exists()


def test_inputs_are_checked_before_anything_runs(backend_python, pieces, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_text("x")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    cases = [
        ({"checkpoint": tmp_path / "missing.pth"}, ["IRG checkpoint file", "missing.pth", "does not exist"]),
        ({"vqvae": tmp_path}, ["VQ-VAE file", "is a folder"]),
        ({"mean": tmp_path / "mean.npy"}, ["mean file", "mean.npy"]),
        ({"std": tmp_path / "std.npy"}, ["std file", "std.npy"]),
        ({"base": no_config}, ["no-config", "has no config.json"]),
        ({"base": str(tmp_path / "gemma")}, ["gemma", "does not exist", "hub id"]),
        ({"out_dir": full}, ["full", "not empty"]),
        ({"stage": 4}, ["stage must be 1, 2 or 3"]),
        ({"dataset": "AMASS"}, ["HumanML3D, KIT-ML", "'AMASS'"]),
        ({"dtype": "float16"}, ["bfloat16, float32", "'float16'"]),
    ]
    for change, needles in cases:
        job = _job(backend_python, pieces, tmp_path / "out", **change)
        job.start()
        assert job.state == "failed" and job.pump() is False and job.pid is None, change
        for needle in needles:
            assert needle in job.error, (needle, job.error)
    job = ConvertJob(str(tmp_path / "python"), pieces["checkpoint"], pieces["base"], None, pieces["mean"],
                     pieces["std"], tmp_path / "out")
    job.start()
    assert job.state == "failed" and "backend Python" in job.error and "Set up backend" in job.error
    assert not (tmp_path / "out").exists()


def test_cancel_stops_the_converter_and_leaves_nothing(backend_python, pieces):
    out = pieces["root"] / "model-cancelled"
    job = _job(backend_python, pieces, out)
    job.start()
    assert job.pid is not None
    time.sleep(0.5)
    job.cancel()
    pump_to_end(job, 20)
    if job.state == "done":  # on a loaded machine the cancel can come after the finished folder was renamed in
        assert job.result == str(out) and (out / "manifest.json").is_file() and not _leftovers(out)
        return
    assert job.state == "cancelled" and job.result is None and job.error is None and job.pid is None
    assert not out.exists() and not _leftovers(out)


def test_converter_output_gives_stage_and_progress_for_both_progress_styles():
    out = ConverterOutput()
    assert out.stage == "Starting the converter"
    assert out.feed("tokenizer: tokenizer.json matches the stock google/gemma-2-2b-it tokenizer") == 0.03
    assert out.stage == "Reading the base config and tokenizer"
    assert out.feed("  reading checkpoint ...") == 0.05 and out.stage == "Reading the checkpoint"
    # a terminal's redraws: the fraction moves inside the step, up to where the next one starts
    assert out.feed("  preparing weights   0%") == pytest.approx(0.25)
    assert out.feed("  preparing weights  50%") == pytest.approx(0.35)
    assert out.stage == "Preparing the weights" and out.detail == "50%"
    assert out.feed("warning: not the stock Gemma-2-2b-it tokenizer: x") is None
    assert out.warnings == ["not the stock Gemma-2-2b-it tokenizer: x"]
    assert out.feed("  verifying ...") == 0.88
    assert out.feed("converted in 3 s: /m") == 0.98
    out.feed("  LLM         1.00 M parameters, float32, stage 2")
    assert out.summary == ["converted in 3 s: /m", "  LLM         1.00 M parameters, float32, stage 2"]
    failing = ConverterOutput()
    failing.feed("irg-motion convert: error: /x.pth: the file is truncated")
    assert failing.error == "/x.pth: the file is truncated"
