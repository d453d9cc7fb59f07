"""The T2M-GPT VQ-VAE: exact state-dict layout, coding, strict loading, receptive field."""
from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_backend.vq.vqvae import VQVAE, VQVAEError, load_vqvae, save_vqvae


class NotATensor:
    """Any object torch's weights-only unpickler must refuse."""

    def __init__(self) -> None:
        self.payload = "arbitrary python object"


def tiny(seed: int = 0, feature_size: int = 263) -> VQVAE:
    torch.manual_seed(seed)
    model = VQVAE(feature_size=feature_size, width=32, code_dim=32).eval()
    with torch.no_grad():
        model.vqvae.quantizer.codebook.normal_()
    return model


def test_published_layout_has_67_keys_and_19698951_numbers():
    state = VQVAE().state_dict()
    assert len(state) == 67
    assert sum(v.numel() for v in state.values()) == 19_698_951
    keys = list(state)
    assert keys[:4] == ["vqvae.encoder.model.0.weight", "vqvae.encoder.model.0.bias",
                        "vqvae.encoder.model.2.0.weight", "vqvae.encoder.model.2.0.bias"]
    assert keys[-1] == "vqvae.quantizer.codebook"
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["vqvae.encoder.model.0.weight"] == (512, 263, 3)
    assert shapes["vqvae.encoder.model.2.0.weight"] == (512, 512, 4)
    assert shapes["vqvae.encoder.model.2.1.model.0.conv1.weight"] == (512, 512, 3)
    assert shapes["vqvae.encoder.model.3.1.model.2.conv2.weight"] == (512, 512, 1)
    assert shapes["vqvae.decoder.model.2.0.model.0.conv1.weight"] == (512, 512, 3)
    assert shapes["vqvae.decoder.model.2.2.weight"] == (512, 512, 3)
    assert shapes["vqvae.decoder.model.6.weight"] == (263, 512, 3)
    assert shapes["vqvae.quantizer.codebook"] == (512, 512)


def test_residual_dilations_are_9_3_1_and_kit_size_differs_only_at_the_ends():
    model = VQVAE(width=32, code_dim=32)
    stack = model.vqvae.encoder.model[2][1].model
    assert [block.conv1.dilation[0] for block in stack] == [9, 3, 1]
    kit = VQVAE(feature_size=251).state_dict()
    assert tuple(kit["vqvae.encoder.model.0.weight"].shape) == (512, 251, 3)
    assert sum(v.numel() for v in kit.values()) == 19_698_951 - 12 * 512 * 3 - 12 * 512 * 3 - 12


def test_hparams_are_the_constructor_arguments():
    assert VQVAE(width=32, code_dim=16, num_codes=64).hparams == {
        "feature_size": 263, "width": 32, "code_dim": 16, "num_codes": 64, "depth": 3,
        "dilation_growth": 3, "down_t": 2, "stride_t": 2}


def test_encode_is_nearest_code_and_decode_gives_four_frames_per_code():
    model = tiny()
    x = torch.randn(2, 37, 263)
    with torch.inference_mode():
        codes = model.encode(x)
        assert codes.shape == (2, 9) and codes.dtype == torch.long
        latent = model.vqvae.encoder(x.permute(0, 2, 1)).permute(0, 2, 1)
        expected = torch.cdist(latent, model.vqvae.quantizer.codebook[None]).argmin(-1)
        assert torch.equal(codes, expected)
        out = model.decode(codes)
    assert out.shape == (2, 36, 263) and out.dtype == torch.float32


def test_encode_and_decode_reject_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="263"):
        model.encode(torch.zeros(1, 8, 251))
    with pytest.raises(ValueError, match="at least 4 frames"):
        model.encode(torch.zeros(1, 3, 263))
    with pytest.raises(ValueError, match="0..511"):
        model.decode(torch.tensor([[0, 512]]))
    with pytest.raises(ValueError, match="0..511"):
        model.decode(torch.tensor([[-1]]))


def test_masked_batch_decode_equals_single_decodes():
    model = tiny(1)
    codes = torch.randint(0, 512, (3, 12))
    lengths = torch.tensor([12, 5, 9])
    with torch.inference_mode():
        batch = model.decode(codes, lengths)
        for row, n in enumerate(lengths.tolist()):
            single = model.decode(codes[row:row + 1, :n])[0]
            assert (batch[row, :4 * n] - single).abs().max() <= 1e-5
        # Without the mask the padding codes leak into the shorter rows' last frames.
        unmasked = model.decode(codes)[1, :20]
        assert (unmasked - model.decode(codes[1:2, :5])[0]).abs().max() > 1e-3


def test_stable_frames_follow_the_decoder_look_ahead():
    model = tiny()
    # Published settings: look-ahead of 87 frames, so 4N - 87 frames are final.
    assert [model.stable_frames(n) for n in (1, 21, 22, 30, 50)] == [0, 0, 1, 33, 113]
    codes = torch.randint(0, 512, (1, 30))
    other = codes.clone()
    other[:, 25:] = torch.randint(0, 512, (1, 5))
    with torch.inference_mode():
        a, b = model.decode(codes)[0], model.decode(other)[0]
    s = model.stable_frames(25)
    assert torch.equal(a[:s], b[:s])
    assert (a[s] - b[s]).abs().max() > 0  # the bound is tight: the next frame already moves


def test_safetensors_round_trip_keeps_original_names(tmp_path):
    model = tiny(2)
    path = tmp_path / "vq.safetensors"
    save_vqvae(model, path)
    assert set(load_file(str(path))) == set(model.state_dict())
    loaded = load_vqvae(path, width=32, code_dim=32)
    assert not loaded.training
    codes = torch.randint(0, 512, (1, 6))
    with torch.inference_mode():
        assert torch.equal(loaded.decode(codes), model.decode(codes))


@pytest.mark.parametrize("layout", ["bare", "net", "net_prefix"])
def test_pth_layouts_load(tmp_path, layout):
    model = tiny(3)
    state = collections.OrderedDict(model.state_dict())
    obj = {"bare": state, "net": {"net": state, "ep": 7},
           "net_prefix": {**{f"net.{k}": v for k, v in state.items()}, "llm.other": torch.zeros(2)}}[layout]
    path = tmp_path / "vqvae.pth"
    torch.save(obj, path)
    loaded = load_vqvae(path, width=32, code_dim=32)
    assert torch.equal(loaded.vqvae.quantizer.codebook, model.vqvae.quantizer.codebook)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = tiny().state_dict()
    missing = {k: v for k, v in state.items() if k != "vqvae.decoder.model.6.bias"}
    path = tmp_path / "missing.safetensors"
    save_file(missing, str(path))
    with pytest.raises(VQVAEError, match=r"missing\.safetensors.*1 missing keys.*vqvae\.decoder\.model\.6\.bias"):
        load_vqvae(path, width=32, code_dim=32)
    extra = dict(state, **{"vqvae.quantizer.code_sum": torch.zeros(3)})
    path = tmp_path / "extra.safetensors"
    save_file(extra, str(path))
    with pytest.raises(VQVAEError, match=r"extra\.safetensors.*unexpected keys.*code_sum"):
        load_vqvae(path, width=32, code_dim=32)


def test_wrong_shape_names_the_key_and_the_hparams(tmp_path):
    path = tmp_path / "w32.safetensors"
    save_vqvae(tiny(), path)
    with pytest.raises(VQVAEError, match=r"w32\.safetensors: vqvae\.encoder\.model\.0\.weight has shape "
                                         r"\(32, 263, 3\), expected \(48, 263, 3\)"):
        load_vqvae(path, width=48, code_dim=32)
    with pytest.raises(VQVAEError, match="feature_size"):
        load_vqvae(path, width=32, code_dim=32, feature_size=251)


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"net": tiny().state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(VQVAEError, match=r"evil\.pth: refused to load.*weights_only=True"):
        load_vqvae(path, width=32, code_dim=32)


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(VQVAEError, match="not found"):
        load_vqvae(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(VQVAEError, match="junk.safetensors"):
        load_vqvae(junk)
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(VQVAEError, match="expected a state dict"):
        load_vqvae(lst)
