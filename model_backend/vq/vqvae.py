"""The T2M-GPT motion VQ-VAE (the frozen motion tokenizer of IRG-MotionLLM).

Layout and parameter names follow the published state dict exactly, so the real
`vqvae.pth` loads with `strict=True`: a top module holding `vqvae`, which holds
`encoder.model`, `decoder.model` and `quantizer.codebook`. Time is downsampled
by `stride_t ** down_t` (4): one code per 4 frames. Features are normalised
(`(x - mean) / std`) on both sides; tensors are (batch, time, features) outside
and (batch, channels, time) inside.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..wire.manifest import vqvae_size_problem
from .weights import read_weights

__all__ = ["VQVAE", "VQVAEError", "load_vqvae", "read_state_dict", "save_vqvae"]


class VQVAEError(ValueError):
    """A VQ-VAE weight file that cannot be loaded into the expected architecture."""


class _ResBlock(nn.Module):
    """ReLU, dilated 3-tap conv, ReLU, 1x1 conv, plus the input (no normalisation)."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(width, width, 3, 1, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class _ResStack(nn.Module):
    """`depth` residual blocks with dilations growth**(depth-1), ..., growth, 1."""

    def __init__(self, width: int, depth: int, growth: int) -> None:
        super().__init__()
        dilations = [growth**d for d in range(depth)][::-1]
        self.model = nn.Sequential(*[_ResBlock(width, d) for d in dilations])

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _Encoder(nn.Module):
    def __init__(self, feature_size: int, width: int, code_dim: int, depth: int, growth: int,
                 down_t: int, stride_t: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(feature_size, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down_t):
            layers.append(nn.Sequential(
                nn.Conv1d(width, width, stride_t * 2, stride_t, stride_t // 2),
                _ResStack(width, depth, growth),
            ))
        layers.append(nn.Conv1d(width, code_dim, 3, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _Decoder(nn.Module):
    def __init__(self, feature_size: int, width: int, code_dim: int, depth: int, growth: int,
                 down_t: int, stride_t: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(code_dim, width, 3, 1, 1), nn.ReLU()]
        for _ in range(down_t):
            layers.append(nn.Sequential(
                _ResStack(width, depth, growth),
                nn.Upsample(scale_factor=stride_t, mode="nearest"),
                nn.Conv1d(width, width, 3, 1, 1),
            ))
        layers += [nn.Conv1d(width, width, 3, 1, 1), nn.ReLU(), nn.Conv1d(width, feature_size, 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _Quantizer(nn.Module):
    """A single codebook: nearest neighbour by L2 to encode, row lookup to decode."""

    def __init__(self, num_codes: int, code_dim: int) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.zeros(num_codes, code_dim))

    def quantize(self, x: Tensor) -> Tensor:
        """(N, code_dim) -> (N,) nearest code indices."""
        k = self.codebook
        dist = (x * x).sum(-1, keepdim=True) - 2.0 * x @ k.t() + (k * k).sum(-1)[None, :]
        return dist.argmin(dim=-1)

    def dequantize(self, idx: Tensor) -> Tensor:
        return self.codebook[idx]


class _Core(nn.Module):
    def __init__(self, feature_size: int, width: int, code_dim: int, num_codes: int, depth: int,
                 dilation_growth: int, down_t: int, stride_t: int) -> None:
        super().__init__()
        args = (feature_size, width, code_dim, depth, dilation_growth, down_t, stride_t)
        self.encoder = _Encoder(*args)
        self.decoder = _Decoder(*args)
        self.quantizer = _Quantizer(num_codes, code_dim)


class VQVAE(nn.Module):
    """The T2M-GPT VQ-VAE; `state_dict()` keys match the published `vqvae.pth`."""

    def __init__(self, feature_size: int = 263, width: int = 512, code_dim: int = 512,
                 num_codes: int = 512, depth: int = 3, dilation_growth: int = 3,
                 down_t: int = 2, stride_t: int = 2) -> None:
        super().__init__()
        self._hparams = dict(feature_size=feature_size, width=width, code_dim=code_dim,
                             num_codes=num_codes, depth=depth, dilation_growth=dilation_growth,
                             down_t=down_t, stride_t=stride_t)
        problem = vqvae_size_problem(self._hparams)
        if problem:  # before a single layer is allocated
            raise VQVAEError(f"cannot build this VQ-VAE: {problem}")
        self.vqvae = _Core(**self._hparams)

    @property
    def hparams(self) -> dict:
        """The constructor arguments (the manifest's "vqvae" entry, minus "file")."""
        return dict(self._hparams)

    @property
    def downsample(self) -> int:
        """Frames per code (4 with the published settings)."""
        return self._hparams["stride_t"] ** self._hparams["down_t"]

    def encode(self, features_norm: Tensor) -> Tensor:
        """(B, T, F) normalised features -> (B, T // downsample) code indices (int64)."""
        if features_norm.ndim != 3 or features_norm.shape[-1] != self._hparams["feature_size"]:
            raise ValueError(f"encode expects (batch, time, {self._hparams['feature_size']}) features, "
                             f"got shape {tuple(features_norm.shape)}")
        if features_norm.shape[1] < self.downsample:
            raise ValueError(f"encode needs at least {self.downsample} frames, got {features_norm.shape[1]}")
        core = self.vqvae
        z = core.encoder(features_norm.permute(0, 2, 1).float())  # (B, C, N)
        b, c, n = z.shape
        idx = core.quantizer.quantize(z.permute(0, 2, 1).reshape(b * n, c))
        return idx.view(b, n)

    def decode(self, indices: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, N) code indices -> (B, N * downsample, F) normalised features.

        `lengths` (B,) marks how many leading codes of each row are real (a right-
        padded batch): every layer then sees zeros past a row's end, exactly as
        when that row is decoded alone, so each row's first `lengths[b] * downsample`
        frames equal its single decode. Frames past the end are undefined.
        """
        if indices.ndim != 2:
            raise ValueError(f"decode expects (batch, tokens) indices, got shape {tuple(indices.shape)}")
        num_codes = self._hparams["num_codes"]
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_codes):
            raise ValueError(f"code indices must be in 0..{num_codes - 1}, "
                             f"got {int(indices.min())}..{int(indices.max())}")
        core = self.vqvae
        z = core.quantizer.dequantize(indices.long()).permute(0, 2, 1)  # (B, C, N)
        if lengths is None:
            return core.decoder(z).permute(0, 2, 1)
        lengths = torch.as_tensor(lengths, device=z.device).long()
        return _masked_step(core.decoder.model, z, lengths)[0].permute(0, 2, 1)

    def stable_frames(self, num_tokens: int) -> int:
        """Leading decoded frames of `num_tokens` codes that no later code can change.

        The decoder is not causal: each convolution looks ahead (kernel 3: one step;
        a residual stack: the sum of its dilations) and zero-pads past the end. A
        frame is final once its whole look-ahead, traced back through every layer
        and upsampling, stays inside the codes already known.
        """
        h = self._hparams
        stack_reach = sum(h["dilation_growth"] ** d for d in range(h["depth"]))
        # Decoder layers from the output back to the codes: (look-ahead, upsampling factor).
        layers = [(1, 1), (1, 1)] + [(1, 1), (0, h["stride_t"]), (stack_reach, 1)] * h["down_t"] + [(1, 1)]
        best = 0
        for frame in range(num_tokens * self.downsample):
            index, length, ok = frame, num_tokens * self.downsample, True
            for reach, up in layers:
                index, length = index // up, length // up
                index += reach
                ok = ok and index < length
            if not ok:
                break
            best = frame + 1
        return best


def _masked_step(module: nn.Module, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Run a decoder module with everything past each row's valid length zeroed before each conv."""
    if isinstance(module, nn.Sequential):
        for child in module:
            x, lengths = _masked_step(child, x, lengths)
        return x, lengths
    if isinstance(module, _ResStack):
        return _masked_step(module.model, x, lengths)
    if isinstance(module, _ResBlock):
        h = module.conv1(_mask(torch.relu(x), lengths))
        return x + module.conv2(_mask(torch.relu(h), lengths)), lengths
    if isinstance(module, nn.Upsample):
        return module(x), lengths * int(module.scale_factor)
    if isinstance(module, nn.Conv1d):
        return module(_mask(x, lengths)), lengths
    return module(x), lengths


def _mask(x: Tensor, lengths: Tensor) -> Tensor:
    keep = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
    return x * keep[:, None, :].to(x.dtype)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The VQ-VAE tensors of a .safetensors or torch.save file (weights only): a bare state dict,
    or one under the key `net`, with a wrapper's `net.` prefix stripped. VQVAEError naming the
    file when it holds anything else."""
    path = Path(path)
    obj = read_weights(path, VQVAEError)
    if isinstance(obj, dict) and "net" in obj:
        obj = obj["net"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise VQVAEError(f"{path}: expected a state dict of tensors (optionally under key 'net'), "
                         f"got {type(obj).__name__}")
    return _strip_wrapper(obj)


def _strip_wrapper(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep only the VQ-VAE of a wrapper save (`net.vqvae....`), without the prefix."""
    if any(k.startswith("net.vqvae.") for k in state):
        return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    return state


def _check_keys(path: Path, model: VQVAE, state: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        raise VQVAEError(f"{path}: not a T2M-GPT VQ-VAE state dict: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise VQVAEError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)} "
                f"for hparams {model.hparams}: pass the matching feature_size/width/num_codes")


def load_vqvae(path: str | Path, **hparams: int) -> VQVAE:
    """Load a VQ-VAE strictly from `.safetensors` or a `torch.save` `.pth`, eval mode, float32.

    `hparams` are `VQVAE` constructor arguments (defaults: the published model).
    Raises `VQVAEError` naming the file and the problem on any key or shape mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise VQVAEError(f"{path}: VQ-VAE weight file not found")
    state = read_state_dict(path)
    model = VQVAE(**hparams)
    _check_keys(path, model, state)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval()


def save_vqvae(model: VQVAE, path: str | Path) -> None:
    """Write the weights as safetensors with the original key names."""
    from safetensors.torch import save_file
    save_file({k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
