"""One short VQ-VAE training run on clips written by the test: a folder the project's codec loads and decodes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bandai_clips import write_dataset

from model_backend.vq.codec import MotionCodec
from model_backend.train.dataset import build_cache
from model_backend.train.vq_train import (VQSettings, encode_features, feature_statistics, heldout_mpjpe,
                                          load_vq_codec, save_vq_folder, train_vqvae, write_tokens)

TINY = VQSettings(width=16, code_dim=16, steps=3, batch=4, window=16, warmup=1, seed=0)


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    root = tmp_path_factory.mktemp("bandai")
    clips = {1: [("bow", "happy", 1), ("bow", "sad", 1)],
             2: [("walk", "normal", i) for i in range(1, 5)] + [("run", "normal", i) for i in range(1, 4)]}
    write_dataset(root, clips)
    return build_cache(root, root / "cache.npz", show_progress=False)


def test_one_short_run_writes_a_folder_the_codec_decodes(motion, tmp_path):
    torch.set_num_threads(1)
    model, mean, std, log = train_vqvae(motion, TINY, show_progress=False)
    assert len(log["loss"]) == 2 and all(np.isfinite(loss) for _, loss in log["loss"])
    folder = save_vq_folder(model, mean, std, tmp_path / "vq", {"note": "test"})
    assert sorted(p.name for p in folder.iterdir()) == ["mean.npy", "metrics.json", "std.npy", "vqvae.json",
                                                        "vqvae.safetensors"]
    entry = json.loads((folder / "vqvae.json").read_text())
    assert entry == {"file": "vqvae.safetensors", "feature_size": 263, "width": 16, "code_dim": 16,
                     "num_codes": 512, "depth": 3, "dilation_growth": 3, "down_t": 2, "stride_t": 2}

    codec = load_vq_codec(folder)  # the project's loader: strict keys and shapes
    assert isinstance(codec, MotionCodec)
    i = motion.indices(content="walk")[0]
    tokens = encode_features(codec, motion.clip_features(i))
    assert len(tokens) == len(motion.clip_features(i)) // 4 and all(0 <= t < 512 for t in tokens)
    decoded = codec.decode(tokens)
    assert decoded.joints.shape == (4 * len(tokens), 22, 3) and np.all(np.isfinite(decoded.joints))
    figures = heldout_mpjpe(codec, motion)
    assert figures["clips"] == int(motion.heldout.sum()) == 3  # one bow, one walk, one run
    assert np.isfinite(figures["global_mm"]) and np.isfinite(figures["root_relative_mm"])

    write_tokens(tmp_path / "tokens.npz", motion, [encode_features(codec, motion.clip_features(k))
                                                   for k in range(len(motion))])
    with np.load(tmp_path / "tokens.npz") as z:
        assert z["offsets"][-1] == len(z["tokens"]) and list(z["contents"]) == list(motion.contents)
        assert list(z["tokens"][z["offsets"][i]:z["offsets"][i + 1]]) == tokens
        assert int(z["frames_per_token"]) == 4 and z["heldout"].sum() == 3


def test_training_is_deterministic_for_a_seed(motion):
    torch.set_num_threads(1)
    a = train_vqvae(motion, TINY, show_progress=False)[0].state_dict()
    b = train_vqvae(motion, TINY, show_progress=False)[0].state_dict()
    c = train_vqvae(motion, VQSettings(**{**TINY.__dict__, "seed": 1}), show_progress=False)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["vqvae.quantizer.codebook"], c["vqvae.quantizer.codebook"])


def test_statistics_are_per_channel_means_and_per_block_stds():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 263)).astype(np.float32) * np.linspace(0.1, 2.0, 263, dtype=np.float32)
    mean, std = feature_statistics(features)
    np.testing.assert_allclose(mean, features.mean(0), atol=1e-6)
    raw = features.std(0)
    np.testing.assert_allclose(std[4:67], raw[4:67].mean(), rtol=1e-5)  # root-relative positions: one value
    np.testing.assert_allclose(std[259:], raw[259:].mean(), rtol=1e-5)  # foot contacts
    assert std[0] == pytest.approx(raw[0], rel=1e-5) and mean.dtype == std.dtype == np.float32
