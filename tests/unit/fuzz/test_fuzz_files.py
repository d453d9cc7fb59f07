"""Fuzz harness, files: generated model folders go through `irg-motion inspect` and loading
(`serve`'s load_engine), generated checkpoint files through `irg-motion convert`.

Every case ends in a result or a clean refusal: inspect and convert return 0 or 2 and never
raise; loading succeeds or raises StartupError; convert leaves either a complete folder or
nothing (no `.converting-*` folder). The peak memory of this process stays under
PEAK_BOUND_KB. Case counts: tests/fuzz_profiles.py; figures: docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from fuzz_profiles import fuzz_settings
from model_pieces import base_folder

PEAK_BOUND_KB = 2_500_000  # pytest with torch, transformers and a few loaded fixtures: about 1 GB

SIZE = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 32, 100_000, 10**12, 2**63, "3", 3.5, None, True, [3], {}]),
                 st.integers(-5, 600))
JUNK = st.one_of(SIZE, st.text(max_size=30), st.sampled_from(["/etc/passwd", "../x", "llm/../../x", "", "."]))
MANIFEST_KEYS = [("stage",), ("dataset",), ("fps",), ("fixture",), ("num_joints",), ("feature_size",),
                 ("vqvae", "file"), ("vqvae", "width"), ("vqvae", "depth"), ("vqvae", "code_dim"),
                 ("vqvae", "num_codes"), ("vqvae", "down_t"), ("vqvae", "stride_t"), ("vqvae", "dilation_growth"),
                 ("motion_tokens", "start_id"), ("motion_tokens", "count"), ("motion_tokens", "first_id")]
CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size", "max_position_embeddings", "sliding_window", "model_type", "layer_types"]
FILES = ["manifest.json", "llm/config.json", "llm/model.safetensors", "llm/tokenizer.json", "vqvae.safetensors",
         "mean.npy", "std.npy"]


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@st.composite
def folder_edit(draw) -> list[tuple[str, Any]]:
    """One to three edits of a model folder."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["manifest", "manifest", "config", "config", "truncate", "delete", "symlink",
                                     "header"]))
        if kind == "manifest":
            edits.append((kind, (draw(st.sampled_from(MANIFEST_KEYS)), draw(JUNK))))
        elif kind == "config":
            edits.append((kind, (draw(st.sampled_from(CONFIG_KEYS)), draw(JUNK))))
        elif kind == "truncate":
            edits.append((kind, (draw(st.sampled_from(FILES)), draw(st.floats(0, 1)))))
        elif kind == "header":
            edits.append((kind, (draw(st.sampled_from(["llm/model.safetensors", "vqvae.safetensors"])),
                                 draw(st.binary(min_size=8, max_size=64)))))
        else:
            edits.append((kind, draw(st.sampled_from(FILES))))
    return edits


def _apply(folder: Path, outside: Path, edits: list[tuple[str, Any]]) -> None:
    for kind, arg in edits:
        if kind in ("manifest", "config"):
            path = folder / ("manifest.json" if kind == "manifest" else "llm/config.json")
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            keys, value = (arg[0], arg[1]) if kind == "manifest" else ((arg[0],), arg[1])
            target = data
            for key in keys[:-1]:
                target = target.setdefault(key, {}) if isinstance(target, dict) else {}
            if isinstance(target, dict):
                target[keys[-1]] = value
            path.write_text(json.dumps(data))
        elif kind == "truncate":
            path = folder / arg[0]
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                path.write_bytes(data[:int(len(data) * arg[1])])
        elif kind == "header":
            path = folder / arg[0]
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                path.write_bytes(arg[1] + data[len(arg[1]):])
        elif kind == "delete":
            (folder / arg).unlink(missing_ok=True)
        elif kind == "symlink":
            path = folder / arg
            if path.is_file() and not path.is_symlink():
                shutil.copy(path, outside / path.name)
                path.unlink()
                os.symlink(outside / path.name, path)


@pytest.fixture(scope="module")
def fixture_model(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("fuzz-files") / "fx", seed=0)


def test_fuzz_model_folders_through_inspect_and_loading(fixture_model, tmp_path):
    from model_backend.cli import main
    from model_backend.serve.server import StartupError, load_engine

    counter = iter(range(10**9))

    @fuzz_settings("folders")
    @given(edits=folder_edit())
    def case(edits: list[tuple[str, Any]]) -> None:
        n = next(counter)
        folder, outside = tmp_path / f"m{n}", tmp_path / f"outside{n}"
        shutil.copytree(fixture_model, folder)
        outside.mkdir()
        _apply(folder, outside, edits)
        assert main(["inspect", str(folder), "--json"]) in (0, 2)
        try:
            load_engine(folder, device="cpu", precision="fp32")
        except StartupError as exc:
            assert exc.code in ("model_missing", "model_load_failed") and str(folder) in exc.message
        shutil.rmtree(folder)
        shutil.rmtree(outside)
        assert _peak_kb() < PEAK_BOUND_KB

    case()
    print(f"\nfuzz folders: peak memory of the test process {_peak_kb() / 1024:.0f} MB")


@st.composite
def checkpoint(draw, state: dict[str, torch.Tensor]) -> tuple[str, Any]:
    """(file suffix, object) from the fixture's state dict with a few hostile changes."""
    obj: dict[str, Any] = dict(state)
    keys = sorted(obj)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "shape", "dtype", "junk", "rename", "rows", "net", "wrap"]))
        key = draw(st.sampled_from(keys))
        if kind == "drop":
            obj.pop(key, None)
        elif kind == "shape":
            obj[key] = torch.zeros(draw(st.lists(st.integers(0, 40), max_size=3)))
        elif kind == "dtype":
            obj[key] = obj.get(key, torch.zeros(1)).to(draw(st.sampled_from([torch.int64, torch.bool, torch.float16])))
        elif kind == "junk":
            obj[key] = draw(st.sampled_from([1, "text", [1, 2], {"a": 1}, None]))
        elif kind == "rename":
            obj[draw(st.sampled_from(["llm.", "base_model.model.", "net.", "x."])) + key] = obj.pop(key, torch.zeros(1))
        elif kind == "rows":
            obj[draw(st.sampled_from(["embeddings", "lm_head"]))] = torch.zeros(draw(st.integers(0, 600)), 64)
        elif kind == "net":
            obj["net"] = draw(st.sampled_from([torch.zeros(3), {"a": torch.zeros(2)}, "x"]))
        else:
            obj = {"state_dict": obj, "epoch": draw(st.sampled_from([1, "x", None]))}
    tensors_only = all(isinstance(v, torch.Tensor) for v in obj.values())
    return (".safetensors" if tensors_only and draw(st.booleans()) else ".pth"), obj


def test_fuzz_checkpoints_through_convert(fixture_model, tmp_path):
    from model_backend.cli import main

    state = load_file(str(fixture_model / "llm/model.safetensors"))
    base = base_folder(fixture_model, tmp_path / "base")
    torch.save({"net": load_file(str(fixture_model / "vqvae.safetensors"))}, tmp_path / "vqvae.pth")
    counter = iter(range(10**9))

    @fuzz_settings("checkpoints")
    @given(made=checkpoint(state), cut=st.one_of(st.none(), st.floats(0, 1)))
    def case(made: tuple[str, Any], cut: float | None) -> None:
        n = next(counter)
        suffix, obj = made
        ckpt = tmp_path / f"irg_stage2_{n}{suffix}"
        if suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in obj.items()}, str(ckpt))
        else:
            torch.save(obj, ckpt)
        if cut is not None:
            ckpt.write_bytes(ckpt.read_bytes()[:int(ckpt.stat().st_size * cut)])
        out = tmp_path / f"out{n}" / "model"
        code = main(["convert", f"--checkpoint={ckpt}", f"--base={base}", f"--vqvae={tmp_path / 'vqvae.pth'}",
                     f"--mean={fixture_model / 'mean.npy'}", f"--std={fixture_model / 'std.npy'}", f"--out={out}",
                     "--dtype=float32"])
        assert code in (0, 2)
        assert (out / "manifest.json").is_file() == (code == 0)
        if out.parent.is_dir():
            assert not [p for p in out.parent.iterdir() if ".converting-" in p.name]
            shutil.rmtree(out.parent)
        ckpt.unlink()
        assert _peak_kb() < PEAK_BOUND_KB

    case()
    print(f"\nfuzz checkpoints: peak memory of the test process {_peak_kb() / 1024:.0f} MB")
