"""Tiny fixture model folders: complete, loadable, deterministic, written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from model_backend.vq import vqvae as vqvae_module
from model_backend.convert.fixture import make_fixture
from model_backend.wire.manifest import ModelFolderError, read_manifest, sha256_file
from model_backend.llm.vocab import MotionVocab
from model_backend.vq.vqvae import load_vqvae


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("fx") / "model", seed=0)


def test_folder_has_every_documented_file(fixture_dir):
    names = set(_hashes(fixture_dir))
    assert {"manifest.json", "vqvae.safetensors", "mean.npy", "std.npy", "llm/config.json",
            "llm/generation_config.json", "llm/model.safetensors", "llm/tokenizer.json",
            "llm/tokenizer_config.json"} <= names
    total = sum(p.stat().st_size for p in fixture_dir.rglob("*") if p.is_file())
    assert total < 5_000_000
    assert not list(fixture_dir.parent.glob(".model.*"))  # no temp folders left behind


def test_manifest_describes_the_folder(fixture_dir):
    m = read_manifest(fixture_dir)
    assert m["fixture"] is True and m["seed"] == 0
    assert m["name"] == "tiny fixture (seed 0, untrained: its motion is noise)"
    assert (m["stage"], m["dataset"], m["feature_size"], m["num_joints"], m["fps"]) == (2, "HumanML3D", 263, 22, 20.0)
    assert m["vqvae"] == {"file": "vqvae.safetensors", "feature_size": 263, "width": 32, "code_dim": 32,
                          "num_codes": 512, "depth": 3, "dilation_growth": 3, "down_t": 2, "stride_t": 2}
    tokenizer = AutoTokenizer.from_pretrained(fixture_dir / "llm", local_files_only=True)
    assert MotionVocab.from_manifest(m["motion_tokens"]) == MotionVocab.from_tokenizer(tokenizer)


def test_tokenizer_is_gemma_like(fixture_dir):
    tok = AutoTokenizer.from_pretrained(fixture_dir / "llm", local_files_only=True)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert tok.unk_token == "<unk>"
    assert tok("x").input_ids[0] == tok.bos_token_id
    assert tok("x", add_special_tokens=False).input_ids[0] != tok.bos_token_id
    assert len(tok) < 4000
    text = "Ünïcode wörks — 動き 🙂\n\tand [plan]tags[/plan] <think>"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    # The IRG prompt wording was in the training corpus: it compresses well.
    prompt = "You are an assistant who helps users understand or generate 3D human motion representations."
    assert len(tok(prompt, add_special_tokens=False).input_ids) < len(prompt) / 3


def test_llm_config_is_a_tiny_gemma2(fixture_dir):
    config = AutoConfig.from_pretrained(fixture_dir / "llm", local_files_only=True)
    tok = AutoTokenizer.from_pretrained(fixture_dir / "llm", local_files_only=True)
    assert config.model_type == "gemma2" and config.vocab_size == len(tok)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.intermediate_size) == (64, 2, 4, 2, 16, 128)
    assert (config.attn_logit_softcapping, config.final_logit_softcapping) == (50.0, 30.0)
    assert config.tie_word_embeddings and getattr(config, "quantization_config", None) is None
    gen = json.loads((fixture_dir / "llm" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, tok.convert_tokens_to_ids("<end_of_turn>")]
    weights = load_file(fixture_dir / "llm" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())
    embed = weights["model.embed_tokens.weight"]
    assert embed.shape == (len(tok), 64) and float(embed.std()) > 1e-3


def test_vqvae_and_statistics_load_and_decode(fixture_dir):
    m = read_manifest(fixture_dir)
    hp = {k: v for k, v in m["vqvae"].items() if k != "file"}
    model = load_vqvae(fixture_dir / m["vqvae"]["file"], **hp)
    with torch.no_grad():
        a = model.decode(torch.tensor([[0, 1, 2]]))
        b = model.decode(torch.tensor([[3, 4, 5]]))
    assert a.shape == (1, 12, 263) and torch.isfinite(a).all()
    assert float((a - b).abs().max()) > 1e-4  # a random codebook: different codes, different motion
    mean, std = np.load(fixture_dir / "mean.npy"), np.load(fixture_dir / "std.npy")
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (263,)
    assert np.isfinite(mean).all() and (std > 0).all()
    assert 0.8 < mean[3] < 1.1  # root height in metres


def test_same_seed_same_bytes_other_seed_other_weights(fixture_dir, tmp_path):
    again = make_fixture(tmp_path / "again", seed=0)
    assert _hashes(again) == _hashes(fixture_dir)
    other = _hashes(make_fixture(tmp_path / "other", seed=1))
    ref = _hashes(fixture_dir)
    assert other["llm/model.safetensors"] != ref["llm/model.safetensors"]
    assert other["vqvae.safetensors"] != ref["vqvae.safetensors"]
    assert other["llm/tokenizer.json"] == ref["llm/tokenizer.json"]  # the vocabulary does not depend on the seed


def test_rebuilding_replaces_a_fixture_in_place(tmp_path):
    target = make_fixture(tmp_path / "fx", seed=3)
    first = _hashes(target)
    assert make_fixture(target, seed=3) == target
    assert _hashes(target) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fx"]


def test_refuses_to_overwrite_other_folders(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ModelFolderError, match="refusing to overwrite"):
        make_fixture(precious)
    assert (precious / "notes.txt").read_text() == "keep me"

    real = make_fixture(tmp_path / "real", seed=0)
    manifest = json.loads((real / "manifest.json").read_text())
    manifest["fixture"] = False  # looks like a converted model now
    (real / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="not a fixture"):
        make_fixture(real, seed=1)
    assert json.loads((real / "manifest.json").read_text())["fixture"] is False


def test_a_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    def broken_save(model, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(vqvae_module, "save_vqvae", broken_save)
    with pytest.raises(OSError, match="disk full"):
        make_fixture(tmp_path / "fx", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_kit_ml_variant(tmp_path):
    folder = make_fixture(tmp_path / "kit", seed=2, dataset="KIT-ML", stage=3)
    m = read_manifest(folder)
    assert (m["dataset"], m["feature_size"], m["num_joints"], m["fps"], m["stage"]) == ("KIT-ML", 251, 21, 12.5, 3)
    std = np.load(folder / "std.npy")
    assert std.shape == (251,) and (std > 0).all()
    assert np.load(folder / "mean.npy")[3] > 500  # root height in millimetres
    model = load_vqvae(folder / "vqvae.safetensors", **{k: v for k, v in m["vqvae"].items() if k != "file"})
    with torch.no_grad():
        assert model.decode(torch.tensor([[7, 8]])).shape == (1, 8, 251)


def test_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        make_fixture(tmp_path / "a", dataset="AMASS")
    with pytest.raises(ValueError, match="stage"):
        make_fixture(tmp_path / "b", stage=4)
    assert list(tmp_path.iterdir()) == []
