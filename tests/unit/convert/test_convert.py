"""`irg-motion convert`: every checkpoint layout of the interface converts to a folder that gives
the source model's exact logits; every bad input fails naming the file and the problem, leaving nothing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_backend.convert.checkpoint import ConvertError, add_convert_arguments, convert, run_convert
from model_backend.convert.fixture import make_fixture
from model_backend.llm.loader import load_llm
from model_backend.wire.manifest import read_manifest
from model_pieces import base_folder

NEW = 514


class NotATensor:
    """A custom class: torch.load(weights_only=True) must refuse to unpickle it."""


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """A fixture model split into the pieces a user downloads, plus its reference logits."""
    root = tmp_path_factory.mktemp("convert")
    fx = make_fixture(root / "fx", seed=0)
    v = read_manifest(fx)["motion_tokens"]["start_id"]
    sd = load_file(str(fx / "llm/model.safetensors"))
    base_weights = {k: t.clone() for k, t in sd.items()}
    base_weights["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:v].clone()
    vq = load_file(str(fx / "vqvae.safetensors"))
    torch.save({"net": vq}, root / "vqvae.pth")
    ref = load_llm(fx, device="cpu", precision="fp32")
    text = ref.tokenizer("a person walks forward").input_ids
    ids = torch.tensor([text + [v, v + 2, v + 300, v + NEW - 1, v + 1]])
    with torch.no_grad():
        logits = ref.model(ids).logits
    with_weights = base_folder(fx, root / "base_weights")
    save_file(base_weights, str(with_weights / "model.safetensors"))
    return {"root": root, "fx": fx, "v": v, "sd": sd, "vq": vq, "ids": ids, "logits": logits,
            "base": base_folder(fx, root / "base"), "base_weights": with_weights}


def _convert(p, ckpt_obj, name: str, *, vqvae: bool = True, base: str = "base", **kw) -> Path:
    ckpt = p["root"] / name
    if name.endswith(".safetensors"):
        save_file(ckpt_obj, str(ckpt))
    else:
        torch.save(ckpt_obj, ckpt)
    out = p["root"] / f"out-{name}"
    kw.setdefault("dtype", "float32")
    return convert(ckpt, p[base], p["root"] / "vqvae.pth" if vqvae else None, p["fx"] / "mean.npy",
                   p["fx"] / "std.npy", out, progress=lambda *a: None, log=lambda m: None, **kw)


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    llm = load_llm(folder, device="cpu", precision="fp32")
    with torch.no_grad():
        return llm.model(ids).logits


def _peft(sd: dict) -> dict:
    """PEFT names: base_model.model. prefix, base_layer on LoRA targets, modules_to_save on the embedding."""
    out = {}
    for k, t in sd.items():
        if k.endswith("proj.weight"):
            k = k.replace(".weight", ".base_layer.weight")
        if k == "model.embed_tokens.weight":
            out["base_model.model.model.embed_tokens.original_module.weight"] = torch.zeros_like(t)
            k = "model.embed_tokens.modules_to_save.default.weight"
        out["base_model.model." + k] = t
    return out


def _layout(name: str, p) -> tuple[object, dict]:
    """(checkpoint object, convert kwargs) for each layout of interface section 6."""
    sd, v, emb = p["sd"], p["v"], p["sd"]["model.embed_tokens.weight"]
    noise = torch.randn_like(emb)
    if name == "bare":
        return sd, {}
    if name == "state_dict_epoch":
        return {"state_dict": sd, "epoch": 12, "step": 3400}, {}
    if name == "wrapper_llm_net":  # stage-3 whole-wrapper save with the VQ-VAE under net.
        obj = {"llm." + k: t for k, t in sd.items()}
        obj.update({"net." + k: t for k, t in p["vq"].items()})
        return obj, {"vqvae": False}
    if name == "peft":
        return _peft(sd), {}
    if name == "embeddings_full":
        return {**sd, "model.embed_tokens.weight": noise, "embeddings": emb}, {}
    if name == "rows_514_lm_head_wins":  # text rows from the state dict, motion rows: lm_head over embeddings
        return {**sd, "model.embed_tokens.weight": emb[:v].clone(), "embeddings": noise[v:].clone(),
                "lm_head": emb[v:].clone()}, {}
    if name == "missing_from_base":  # only motion rows + one layer: the rest comes from the base weights
        obj = {k: t for k, t in sd.items() if k.startswith("model.layers.1.")}
        return {"state_dict": {**obj, "embeddings": emb[v:].clone()}}, {"base": "base_weights"}
    if name == "safetensors":
        return {k: t.contiguous() for k, t in sd.items()}, {}
    raise AssertionError(name)


LAYOUTS = ["bare", "state_dict_epoch", "wrapper_llm_net", "peft", "embeddings_full", "rows_514_lm_head_wins",
           "missing_from_base", "safetensors"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_source_logits(pieces, layout):
    obj, kw = _layout(layout, pieces)
    suffix = ".safetensors" if layout == "safetensors" else ".pth"
    folder = _convert(pieces, obj, f"irg_{layout}_stage2{suffix}", **kw)
    assert torch.equal(_logits(folder, pieces["ids"]), pieces["logits"])
    manifest = read_manifest(folder)
    assert manifest["stage"] == 2 and manifest["fixture"] is False and manifest["feature_size"] == 263
    assert manifest["motion_tokens"]["start_id"] == pieces["v"]
    assert manifest["motion_tokens"]["first_id"] == pieces["v"] + 2
    roles = {s["role"] for s in manifest["sources"]}
    assert {"irg_checkpoint", "mean", "std", "base_config", "base_tokenizer"} <= roles
    vq = load_file(str(folder / "vqvae.safetensors"))
    assert vq.keys() == pieces["vq"].keys() and all(torch.equal(vq[k], pieces["vq"][k]) for k in vq)


def test_bf16_folder_holds_the_rounded_weights_and_reports_what_it_did(pieces):
    messages: list[str] = []
    ckpt = pieces["root"] / "ckpt_wrapper.pth"
    torch.save({"llm." + k: t for k, t in pieces["sd"].items()}, ckpt)
    out = convert(ckpt, pieces["base"], pieces["root"] / "vqvae.pth", pieces["fx"] / "mean.npy",
                  pieces["fx"] / "std.npy", pieces["root"] / "out-bf16", dtype="bfloat16",
                  progress=lambda *a: None, log=messages.append)
    saved = load_file(str(out / "llm/model.safetensors"))
    assert "lm_head.weight" not in saved  # tied: stored once
    for key, src in pieces["sd"].items():
        assert saved[key].dtype == torch.bfloat16 and torch.equal(saved[key], src.to(torch.bfloat16)), key
    config = json.loads((out / "llm/config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["vocab_size"] == pieces["v"] + NEW
    manifest = read_manifest(out)
    assert manifest["stage"] == 3 and manifest["dtype"] == "bfloat16"  # guessed from the llm. prefix
    text = "\n".join(messages)
    assert "not the stock Gemma-2-2b-it tokenizer" in text and "stage: 3 (guessed" in text
    assert f"<Motion> {pieces['v']}" in text
    assert load_llm(out, device="cpu", precision="bf16").model.dtype == torch.bfloat16


def _fails(pieces, obj_or_file, name: str, *, match: list[str], vqvae: Path | None = None, **kw) -> None:
    """The conversion fails naming the file and the problem, and leaves nothing at or next to --out."""
    root = pieces["root"]
    ckpt = root / name
    before = set(root.iterdir())
    if isinstance(obj_or_file, bytes):
        ckpt.write_bytes(obj_or_file)
    else:
        torch.save(obj_or_file, ckpt)
    out = root / f"failed-{name}"
    with pytest.raises(ConvertError) as err:
        convert(ckpt, kw.pop("base", pieces["base"]), vqvae or root / "vqvae.pth", pieces["fx"] / "mean.npy",
                pieces["fx"] / "std.npy", out, progress=lambda *a: None, log=lambda m: None, **kw)
    message = str(err.value)
    for needle in match:
        assert needle in message, (needle, message)
    assert not out.exists()
    assert set(root.iterdir()) - before == {ckpt}, "a failed conversion left files behind"


def test_truncated_checkpoint_fails_clearly(pieces):
    good = pieces["root"] / "whole.pth"
    torch.save(pieces["sd"], good)
    data = good.read_bytes()
    _fails(pieces, data[: len(data) // 2], "stage2_truncated.pth", match=["stage2_truncated.pth", "truncated"])


def test_pickle_with_objects_is_refused_without_running_it(pieces):
    obj = {"state_dict": pieces["sd"], "args": NotATensor()}
    _fails(pieces, obj, "stage2_pickled.pth", match=["stage2_pickled.pth", "not plain tensors", "NotATensor"])


def test_embedding_of_another_vocabulary_names_the_sizes(pieces):
    emb = pieces["sd"]["model.embed_tokens.weight"]
    v, h = pieces["v"], emb.shape[1]
    obj = {**pieces["sd"], "model.embed_tokens.weight": torch.zeros(v + 100, h)}
    _fails(pieces, obj, "stage2_vocab.pth", match=["stage2_vocab.pth", f"({v + 100}, {h})", str(v + NEW)])
    obj = {**pieces["sd"], "embeddings": torch.zeros(300, h)}
    _fails(pieces, obj, "stage2_rows.pth", match=["stage2_rows.pth", "'embeddings'", f"(300, {h})", "514"])


def test_vqvae_with_wrong_keys_names_the_file(pieces):
    bad = {k.replace("encoder", "enc"): t for k, t in pieces["vq"].items()}
    vq = pieces["root"] / "bad_vqvae.pth"
    torch.save({"net": bad}, vq)
    _fails(pieces, pieces["sd"], "stage2_badvq.pth", vqvae=vq, match=["bad_vqvae.pth", "missing keys"])
    wrapper = {**{"llm." + k: t for k, t in pieces["sd"].items()}, **{"net." + k: t for k, t in bad.items()}}
    root = pieces["root"]
    ckpt = root / "wrapper_badnet.pth"
    torch.save(wrapper, ckpt)
    with pytest.raises(ConvertError, match=r"wrapper_badnet\.pth: the VQ-VAE under 'net\.' .*missing keys"):
        convert(ckpt, pieces["base"], None, pieces["fx"] / "mean.npy", pieces["fx"] / "std.npy",
                root / "out-badnet", progress=lambda *a: None, log=lambda m: None)
    assert not (root / "out-badnet").exists()


def test_missing_llm_weights_and_lora_adapters_are_refused(pieces):
    partial = {k: t for k, t in pieces["sd"].items() if not k.startswith("model.layers.1.")}
    _fails(pieces, partial, "stage2_partial.pth", match=["stage2_partial.pth", "missing", "model.layers.1."])
    lora = {**_peft(pieces["sd"]),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(4, 64)}
    _fails(pieces, lora, "stage2_lora.pth", match=["stage2_lora.pth", "LoRA", "merge_and_unload"])


def test_unknown_stage_asks_for_it_and_mean_size_is_checked(pieces):
    _fails(pieces, pieces["sd"], "checkpoint.pth", match=["checkpoint.pth", "--stage"])
    _fails(pieces, pieces["sd"], "stage1_kit.pth", dataset="KIT-ML", match=["mean.npy", "251", "--dataset"])


def test_hub_id_offline_gives_a_clear_error(pieces):
    # conftest sets HF_HUB_OFFLINE=1; an id no cache holds, so the answer never depends on the machine
    _fails(pieces, pieces["sd"], "stage2_hub.pth", base="irg-motion-tests/not-cached",
           match=["irg-motion-tests/not-cached", "offline", "--base"])


def test_cli_wiring_converts_and_reports_errors(pieces, capsys):
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    ckpt = pieces["root"] / "cli_stage1.pth"
    torch.save(pieces["sd"], ckpt)
    common = ["--checkpoint", str(ckpt), "--base", str(pieces["base"]), "--vqvae", str(pieces["root"] / "vqvae.pth"),
              "--mean", str(pieces["fx"] / "mean.npy"), "--std", str(pieces["fx"] / "std.npy")]
    out = pieces["root"] / "out-cli"
    assert run_convert(parser.parse_args(common + ["--out", str(out), "--dtype", "float32"])) == 0
    assert read_manifest(out)["stage"] == 1
    assert run_convert(parser.parse_args(common + ["--out", str(out)])) == 2  # never overwrites: bad input
    assert "not empty" in capsys.readouterr().err
