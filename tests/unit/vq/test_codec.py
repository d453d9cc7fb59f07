"""MotionCodec: tokens <-> motion through a tiny VQ-VAE model folder with the real HumanML3D statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_backend.vq.codec import DecodedMotion, MotionCodec
from model_backend.wire.manifest import ModelFolderError
from model_backend.motion.features import resample
from model_backend.rig_math.skeleton import to_blender
from model_backend.vq.vqvae import VQVAE, VQVAEError, save_vqvae


def make_codec_folder(folder, humanml3d_dir, width=32, seed=0):
    """manifest.json + vqvae.safetensors (random width-`width` VQ-VAE) + real mean/std as float32."""
    torch.manual_seed(seed)
    vq = VQVAE(width=width, code_dim=width)
    with torch.no_grad():
        vq.vqvae.quantizer.codebook.normal_()
    folder.mkdir(parents=True, exist_ok=True)
    save_vqvae(vq, folder / "vqvae.safetensors")
    for name in ("mean", "std"):
        np.save(folder / f"{name}.npy", np.load(humanml3d_dir / f"t2m_{name}.npy").astype(np.float32))
    manifest = {
        "format": "irg-motion-model", "format_version": 1, "name": "codec test", "stage": 2,
        "dataset": "HumanML3D", "feature_size": 263, "num_joints": 22, "fps": 20.0, "fixture": True,
        "vqvae": {"file": "vqvae.safetensors", **vq.hparams},
        "motion_tokens": {"start": "<Motion>", "end": "</Motion>", "start_id": 256000, "end_id": 256001,
                          "first_id": 256002, "count": 512},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def folder(humanml3d_dir, tmp_path_factory):
    return make_codec_folder(tmp_path_factory.mktemp("codec") / "model", humanml3d_dir)


@pytest.fixture(scope="module")
def codec(folder):
    return MotionCodec.from_dir(folder)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 512, 40).tolist()


def test_decode_gives_four_frames_per_token(codec, humanml3d_dir):
    toks = [5, 17, 300, 511, 0, 42, 7]
    m = codec.decode(toks)
    assert isinstance(m, DecodedMotion) and m.tokens == toks and m.fps == 20.0
    assert m.features.shape == (28, 263) and m.joints.shape == (28, 22, 3)
    assert m.joints_blender.shape == (28, 22, 3) and m.contacts.shape == (28, 4)
    for arr in (m.features, m.joints, m.joints_blender, m.contacts):
        assert arr.dtype == np.float32 and np.all(np.isfinite(arr))
    assert np.array_equal(m.joints_blender, to_blender(m.joints))
    assert m.contacts.min() >= 0 and m.contacts.max() <= 1
    # Features are the decoder output de-normalised with the folder's statistics.
    mean = np.load(humanml3d_dir / "t2m_mean.npy").astype(np.float32)
    std = np.load(humanml3d_dir / "t2m_std.npy").astype(np.float32)
    with torch.inference_mode():
        norm = codec.vqvae.decode(torch.tensor([toks]))[0].numpy()
    assert np.abs(m.features - (norm * std + mean)).max() < 1e-5


@pytest.mark.parametrize("bad, match", [
    ([], "at least one token"),
    ([3, 512], "0..511"),
    ([-1], "0..511"),
    ([1.5], "integer"),
    ([True], "integer"),
])
def test_decode_rejects_bad_tokens(codec, bad, match):
    with pytest.raises(ValueError, match=match):
        codec.decode(bad)


def test_batch_decode_equals_single_decodes(codec, tokens):
    lists = [tokens[:40], tokens[3:8], tokens[10:33], [9]]
    batch = codec.decode_batch(lists)
    assert [len(m.features) for m in batch] == [160, 20, 92, 4]
    for toks, got in zip(lists, batch):
        single = codec.decode(toks)
        assert got.tokens == toks
        assert np.abs(got.features - single.features).max() <= 1e-5
        assert np.abs(got.joints - single.joints).max() <= 1e-5


def test_partial_decode_leading_frames_are_final(codec, tokens):
    full = codec.decode(tokens)
    for n in (25, 30, 36):
        part, stable = codec.decode_partial(tokens[:n])
        assert stable == 4 * n - 87  # decoder look-ahead of the published architecture
        assert np.abs(part.features[:stable] - full.features[:stable]).max() <= 1e-5
        assert np.abs(part.joints[:stable] - full.joints[:stable]).max() <= 1e-5
        # Frames after the bound do change when more tokens arrive.
        assert np.abs(part.features[-4:] - full.features[4 * n - 4:4 * n]).max() > 1e-3
    assert codec.decode_partial(tokens[:10])[1] == 0


def test_encode_real_clip_gives_valid_tokens(codec, humanml3d_dir):
    joints = np.load(humanml3d_dir / "012314_joints.npy")  # 170 frames at 20 fps
    codes = codec.encode_joints(to_blender(joints), 20.0)
    assert len(codes) == 42 and all(0 <= c < 512 for c in codes)  # round(169 / 4)
    assert len(set(codes)) > 1
    decoded = codec.decode(codes)
    assert decoded.joints.shape == (168, 22, 3)
    # The same clip at 30 fps covers the same time: about the same number of tokens.
    fast = resample(joints, 20.0, 30.0)
    assert abs(len(codec.encode_joints(to_blender(fast), 30.0)) - 42) <= 1
    # Short clips: one frame holds its pose for one token.
    assert len(codec.encode_joints(to_blender(joints[:1]), 20.0)) == 1


def test_encode_is_invariant_to_world_placement(codec, humanml3d_dir):
    joints = np.load(humanml3d_dir / "012314_joints.npy")[:41]
    b = to_blender(joints)
    c, s = np.cos(0.9), np.sin(0.9)
    moved = b @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + np.array([2.0, -1.0, 0.5])
    assert codec.encode_joints(b, 20.0) == codec.encode_joints(moved, 20.0)


def test_encode_rejects_bad_input(codec):
    with pytest.raises(ValueError, match=r"\(frames, 22, 3\)"):
        codec.encode_joints(np.zeros((10, 21, 3)), 20.0)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode_joints(np.full((10, 22, 3), np.nan), 20.0)
    with pytest.raises(ValueError, match="fps"):
        codec.encode_joints(np.zeros((10, 22, 3)), 0.0)


def test_from_dir_names_a_wrong_std_file(tmp_path, humanml3d_dir):
    folder = make_codec_folder(tmp_path / "m", humanml3d_dir)
    np.save(folder / "std.npy", np.ones(251, np.float32))
    with pytest.raises(ModelFolderError, match=r"std\.npy: holds shape \(251,\) but the model's features have 263"):
        MotionCodec.from_dir(folder)
    np.save(folder / "std.npy", np.zeros(263, np.float32))
    with pytest.raises(ModelFolderError, match=r"std\.npy: values must be finite and positive"):
        MotionCodec.from_dir(folder)
    (folder / "mean.npy").unlink()
    with pytest.raises(ModelFolderError, match="mean.npy is missing"):
        MotionCodec.from_dir(folder)


def test_from_dir_rejects_a_vqvae_that_does_not_match_the_manifest(tmp_path, humanml3d_dir):
    folder = make_codec_folder(tmp_path / "m", humanml3d_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["vqvae"]["width"] = 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VQVAEError, match=r"vqvae\.safetensors: .*has shape"):
        MotionCodec.from_dir(folder)
    (folder / "vqvae.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="vqvae.safetensors is missing"):
        MotionCodec.from_dir(folder)
