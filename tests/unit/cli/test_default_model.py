"""The default model: one place names the shipped demo model's folder, and every command that
takes a model uses it when neither --model nor IRG_MODEL_DIR says otherwise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_backend.cli import main
from model_backend.wire import manifest
from model_backend.wire.manifest import MODEL_ENV, default_model_dir, resolve_model_dir, shipped_model

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def fixture_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("default") / "model"
    assert main(["make-fixture", str(folder), "--seed", "0"]) == 0
    return folder


@pytest.fixture()
def no_shipped_model(monkeypatch, tmp_path):
    """An installation without the demo model (a backend installed from the wheel)."""
    monkeypatch.setattr(manifest, "default_model_dir", lambda: tmp_path / "no-demo-model")
    monkeypatch.delenv(MODEL_ENV, raising=False)


def test_the_demo_model_lives_in_presets_beside_the_packages():
    assert default_model_dir() == ROOT / "presets" / "models" / "irg-tiny"
    assert shipped_model() == (default_model_dir() if (default_model_dir() / "manifest.json").is_file() else None)


def test_a_given_folder_wins_then_the_environment_then_the_demo_model(monkeypatch, tmp_path):
    monkeypatch.setattr(manifest, "default_model_dir", lambda: tmp_path / "demo")
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert resolve_model_dir(None) is None  # no demo model here: nothing to fall back on
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text("{}")
    assert resolve_model_dir(None) == str(tmp_path / "demo")
    assert resolve_model_dir("") == str(tmp_path / "demo")
    monkeypatch.setenv(MODEL_ENV, "/env/model")
    assert resolve_model_dir(None) == "/env/model"
    assert resolve_model_dir("/given") == "/given"


def test_commands_take_the_model_from_the_environment(fixture_model, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(MODEL_ENV, str(fixture_model))
    assert main(["inspect", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dir"] == str(fixture_model)
    assert main(["decode", "--tokens", "1,2,3,4", "--out", str(tmp_path / "m.npz")]) == 0
    with np.load(tmp_path / "m.npz") as motion:
        assert motion["tokens"].tolist() == [1, 2, 3, 4] and motion["joints"].shape == (16, 22, 3)


def test_without_any_model_the_error_names_every_way_to_give_one(no_shipped_model, capsys):
    for argv in (["generate", "a person walks", "--out", "x.npz"], ["serve", "--stdio"],
                 ["extend", "--tokens", "1,2", "then he sits down", "--out", "x.npz"],
                 ["decode", "--tokens", "1,2", "--out", "x.npz"], ["inspect"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "no model folder" in err and MODEL_ENV in err and "presets/models/irg-tiny" in err, err
        assert ("give the folder as DIR" if argv[0] == "inspect" else "give one with --model DIR") in err


@pytest.mark.skipif(shipped_model() is None, reason=f"the demo model {default_model_dir()} is absent")
def test_the_demo_model_is_the_default_of_the_command_line(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != MODEL_ENV}
    out = subprocess.run([sys.executable, "-m", "model_backend", "inspect", "--json"], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dir"] == str(default_model_dir())
