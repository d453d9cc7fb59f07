"""Loading a model folder: precision choice, quantisation on CPU, generation, folder validation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Gemma2Config

from model_backend.convert.fixture import make_fixture
from model_backend.llm.loader import (InsufficientMemoryError, LoaderError, count_parameters, estimate_weight_bytes,
                                      load_llm, pick_precision, resolve_device)
from model_backend.wire.manifest import ModelFolderError, read_manifest, write_manifest

PROMPT = "a person walks forward and waves with the right hand"


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("fx") / "model", seed=0)


@pytest.fixture(scope="module")
def fp32(fixture_dir):
    return load_llm(fixture_dir, device="cpu", precision="fp32")


def _logits(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(ids).logits.float()[0]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


# ---------------------------------------------------------------- loading on CPU

def test_fp32_loads_the_saved_weights(fixture_dir, fp32):
    saved = load_file(fixture_dir / "llm" / "model.safetensors")
    assert torch.equal(fp32.model.model.embed_tokens.weight, saved["model.embed_tokens.weight"])
    assert fp32.model.lm_head.weight.data_ptr() == fp32.model.model.embed_tokens.weight.data_ptr()  # tied
    assert (fp32.device, fp32.precision) == ("cpu", "fp32") and "fp32 as requested" in fp32.why
    assert fp32.model.config._attn_implementation == "eager"
    assert fp32.vocab.start_id == read_manifest(fixture_dir)["motion_tokens"]["start_id"]
    assert fp32.eos_ids == [1, fp32.tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    assert fp32.model.generation_config.eos_token_id == fp32.eos_ids
    assert fp32.model_dir == fixture_dir and fp32.manifest["fixture"] is True


@pytest.mark.parametrize("precision, min_corr, layer_type", [
    ("bf16", 0.999, torch.nn.Linear),
    ("nf4", 0.9, bnb.nn.Linear4bit),
    ("int8", 0.99, bnb.nn.Linear8bitLt),
])
def test_each_precision_loads_quantises_and_generates(fixture_dir, fp32, precision, min_corr, layer_type):
    loaded = load_llm(fixture_dir, device="cpu", precision=precision)
    assert loaded.precision == precision
    linears = [m for m in loaded.model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 7 and all(type(m) is layer_type for m in linears)
    assert loaded.model.model.embed_tokens.weight.dtype in (torch.bfloat16, torch.float32)  # never fp16
    assert loaded.model.model.embed_tokens.weight.dtype != torch.float16
    ref, got = _logits(fp32), _logits(loaded)
    assert _corr(ref, got) > min_corr
    if precision != "bf16":
        assert float((ref - got).abs().max()) > 1e-3  # really quantised, not a full-precision copy
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    out = loaded.model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)
    assert torch.equal(out[0, : ids.shape[1]], ids[0])


def test_fp32_greedy_generation_is_reproducible(fp32):
    ids = fp32.tokenizer(PROMPT, return_tensors="pt").input_ids
    a = fp32.model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    b = fp32.model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(a, b) and a.shape[1] == ids.shape[1] + 5


def test_auto_on_this_machine_explains_itself(fixture_dir):
    loaded = load_llm(fixture_dir)  # device and precision auto
    if torch.cuda.is_available():
        assert loaded.device.startswith("cuda")
    else:
        assert loaded.device == "cpu" and loaded.precision == "fp32"
        assert "auto: no CUDA device" in loaded.why
    assert "GB free" in loaded.why


def test_device_requests_are_checked():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(LoaderError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LoaderError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- the size estimate and the rule

def test_estimate_matches_the_fixture_exactly(fp32):
    linear, other = count_parameters(fp32.model.config)
    assert linear + other == sum(p.numel() for p in fp32.model.parameters())
    assert estimate_weight_bytes(fp32.model.config, "fp32") == 4 * (linear + other)


def test_estimate_matches_the_published_figures_for_gemma2_2b():
    config = Gemma2Config(vocab_size=256514)  # the defaults are Gemma-2 2B
    assert sum(count_parameters(config)) == pytest.approx(2.616e9, rel=0.002)
    assert estimate_weight_bytes(config, "bf16") == pytest.approx(5.2e9, rel=0.02)
    assert estimate_weight_bytes(config, "nf4") == pytest.approx(2.2e9, rel=0.03)


@pytest.fixture(scope="module")
def sizes_2b() -> dict[str, int]:
    config = Gemma2Config(vocab_size=256514)
    return {m: estimate_weight_bytes(config, m) for m in ("fp32", "bf16", "nf4", "int8")}


@pytest.mark.parametrize("device, free_gb, native_bf16, expected", [
    ("cuda", 24.0, True, "bf16"),
    ("cuda", 7.0, True, "bf16"),    # 1.3 x 5.23 GB = 6.8 GB
    ("cuda", 6.0, True, "nf4"),
    ("cuda", 2.5, True, "nf4"),     # 1.1 x 2.23 GB = 2.45 GB
    ("cuda", 16.0, False, "fp32"),  # no native bf16 (V100): fp32, 1.3 x 10.5 GB = 13.6 GB
    ("cuda", 8.0, False, "nf4"),
    ("cpu", 32.0, True, "fp32"),    # native bf16 decodes slower than fp32 on torch's CPU path
    ("cpu", 32.0, False, "fp32"),
    ("cpu", 8.0, True, "nf4"),      # fp32 does not fit comfortably (1.3 x 10.5 GB)
    ("cpu", 4.0, False, "nf4"),
    ("cpu", 2.0, False, None),      # nothing fits: a clear error naming the smallest mode
])
def test_auto_rule(sizes_2b, device, free_gb, native_bf16, expected):
    if expected is None:
        with pytest.raises(InsufficientMemoryError, match="nf4"):
            pick_precision("auto", device, int(free_gb * 1e9), sizes_2b, native_bf16)
        return
    mode, why = pick_precision("auto", device, int(free_gb * 1e9), sizes_2b, native_bf16)
    assert mode == expected
    assert f"{free_gb:.2f} GB free" in why


def test_not_enough_memory_names_what_would_fit(sizes_2b):
    with pytest.raises(InsufficientMemoryError, match="precision bf16 needs about 5.75 GB.*use precision='nf4'"):
        pick_precision("bf16", "cuda", int(4e9), sizes_2b, True, "cuda:0 (test GPU)")
    with pytest.raises(InsufficientMemoryError, match="no precision fits.*nf4, needs about 2.45 GB"):
        pick_precision("auto", "cuda", int(2e9), sizes_2b, True)


def test_fp16_and_unknown_precisions_are_refused(fixture_dir, sizes_2b):
    with pytest.raises(LoaderError, match="Gemma-2 overflows in fp16: use bf16 or fp32"):
        pick_precision("fp16", "cuda", int(24e9), sizes_2b, True)
    with pytest.raises(LoaderError, match="use one of auto, nf4, int8, bf16, fp32"):
        load_llm(fixture_dir, device="cpu", precision="q3")


# ---------------------------------------------------------------- bad folders

@pytest.fixture()
def broken(fixture_dir, tmp_path) -> Path:
    """A private copy of the fixture folder to damage."""
    return Path(shutil.copytree(fixture_dir, tmp_path / "copy"))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(ModelFolderError, match=r"nowhere: not found.*irg-motion convert.*make-fixture"):
        load_llm(tmp_path / "nowhere", device="cpu")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(ModelFolderError, match="empty: manifest.json is missing"):
        load_llm(tmp_path / "empty", device="cpu")


def test_missing_llm_folder(broken):
    shutil.rmtree(broken / "llm")
    with pytest.raises(ModelFolderError, match=f"{broken}: llm/config.json is missing"):
        load_llm(broken, device="cpu")


def test_missing_weights(broken):
    (broken / "llm" / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="llm/model.safetensors is missing"):
        load_llm(broken, device="cpu")


def test_manifest_key_missing_or_wrong_version(broken):
    data = json.loads((broken / "manifest.json").read_text())
    del data["motion_tokens"]
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="lacks the key.*motion_tokens"):
        read_manifest(broken)
    _edit_json(broken / "manifest.json", motion_tokens={"start": "<Motion>"}, format_version=2)
    with pytest.raises(ModelFolderError, match="format_version 2"):
        read_manifest(broken)


def test_manifest_inconsistent_with_dataset(broken):
    _edit_json(broken / "manifest.json", feature_size=251)
    with pytest.raises(ModelFolderError, match="feature_size is 251 but HumanML3D has 263"):
        read_manifest(broken)


def test_write_manifest_refuses_invalid_content(broken):
    good = read_manifest(broken)
    with pytest.raises(ModelFolderError, match="stage must be 1, 2 or 3"):
        write_manifest(broken, {**good, "stage": 7})
    assert read_manifest(broken) == good  # the file on disk is untouched


def test_tokenizer_that_disagrees_with_the_manifest(broken):
    data = json.loads((broken / "manifest.json").read_text())
    data["motion_tokens"] = {k: v + 1 if k.endswith("_id") else v for k, v in data["motion_tokens"].items()}
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="different conversions"):
        load_llm(broken, device="cpu")


def test_embedding_smaller_than_the_vocabulary(broken, fp32):
    _edit_json(broken / "llm" / "config.json", vocab_size=len(fp32.tokenizer) - 10)
    with pytest.raises(ModelFolderError, match="embedding was not resized"):
        load_llm(broken, device="cpu")


def test_a_quantised_save_is_refused(broken):
    _edit_json(broken / "llm" / "config.json", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(ModelFolderError, match="quantised save"):
        load_llm(broken, device="cpu")


def test_weights_that_do_not_match_the_config_are_refused(broken):
    path = broken / "llm" / "model.safetensors"
    weights = load_file(path)
    del weights["model.layers.1.mlp.down_proj.weight"]  # transformers alone would fill it at random
    save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(ModelFolderError, match="1 missing keys \\(first: model.layers.1.mlp.down_proj.weight\\)"):
        load_llm(broken, device="cpu", precision="fp32")


def test_a_damaged_tokenizer_is_reported(broken):
    (broken / "llm" / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelFolderError, match="tokenizer cannot be read"):
        load_llm(broken, device="cpu")
