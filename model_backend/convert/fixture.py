"""Tiny, untrained model folders for tests and demos (`irg-motion make-fixture`).

A fixture has exactly the layout and formats of a converted IRG-MotionLLM folder
(docs/model-folder.md) at a fraction of the size: a byte-level BPE tokenizer trained
here on a small built-in corpus (BOS/EOS/PAD/UNK like Gemma, plus the 514 motion
tokens), a 2-layer Gemma-2 with random weights, a narrow VQ-VAE with random weights,
and made-up feature statistics. Everything follows from the seed, so the same seed
gives byte-identical files. Its motion is noise: it exercises code, not quality.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..wire.manifest import (FORMAT, FORMAT_VERSION, MANIFEST_NAME, ModelFolderError, created_by, make_readable,
                             read_manifest, write_manifest)
from ..rig_math.skeleton import Skeleton, skeleton_for
from ..llm.vocab import MotionVocab, add_motion_tokens

__all__ = ["make_fixture", "build_tokenizer", "build_base_tokenizer", "build_llm", "save_llm", "feature_statistics",
           "fixture_corpus", "check_replaceable", "swap_into_place"]

# Gemma-2 puts these at ids 0..3 and stops on <eos> and <end_of_turn>; the fixture does too.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
TOKENIZER_VOCAB_SIZE = 2000

_SYSTEM = "You are an assistant who helps users understand or generate 3D human motion representations."
_TEMPLATES = (
    "Given a text outlining a human motion objective, employ a step-by-step thought process to realize "
    "the motion: (1) analyze the text, providing a clear explanation of the reasoning to identify "
    "essential elements; (2) conduct several rounds of motion generation and self-assessment until the "
    "motion is satisfactory. Wrap all responses in <think> and </think> tags, and formulate a plan "
    "before each step.\nGoal Text: {c}",
    "Generate a motion that depicts {c}.",
    "Determine the critical aspects to address prior to generating a motion that represents {c}.",
    "Motion: <Motion></Motion>. Goal text: {c}. Assess the alignment between the motion and the goal.",
    "Motion: <Motion></Motion>. Goal text: {c}. Determine how to refine the generated motion for better alignment.",
    "Motion: <Motion></Motion>. Goal text: {c}. Refine the motion according to the instruction: {c}.",
    "<Motion></Motion>\nProvide a detailed description of the motion.",
)
_TRACE = (
    "<think>[plan]I need to analyze the goal and identify the critical aspects to generate the motion.[/plan]\n"
    "[analyze]The goal describes {c}. The key elements are the direction, the speed and the arms.[/analyze]\n"
    "[plan]I need to generate a motion according to the previous analysis.[/plan]\n"
    "[generate]<Motion></Motion>[/generate]\n"
    "[plan]I need to assess the alignment between the generated motion and the goal text, then provide "
    "specific refinement instructions for improvement.[/plan]\n"
    "[assess]Assessment: The motion shows {c} but the arms move too little.\n"
    "Refinement: Raise the right arm higher and keep walking forward.[/assess]\n"
    "[plan]I need to refine the motion according to the instruction.[/plan]\n"
    "[assess]Assessment: The motion matches the goal well.\nRefinement: No refinements needed.[/assess]\n"
    "[plan]I need to finish thinking as the satisfactory motion is generated.[/plan]\n</think>"
)
_SUBJECTS = ("a person", "a man", "a woman", "someone", "the person", "a figure")
_ACTIONS = ("walks forward", "runs in a circle", "jumps up", "turns around", "waves with the right hand",
            "kicks with the left leg", "sits down", "stands up", "raises both arms", "crouches low",
            "steps to the side", "dances happily", "throws a ball", "climbs stairs", "bends over",
            "spins slowly", "stumbles backward", "claps hands", "walks slowly then stops", "punches forward")
_MANNERS = ("", " quickly", " slowly", " twice", " while looking left", " and then walks back")


def fixture_corpus() -> list[str]:
    """The built-in English training text: IRG prompts, trace tags and motion sentences."""
    captions = [f"{s} {a}{m}" for s in _SUBJECTS for a in _ACTIONS for m in _MANNERS]
    lines = [f"{_SYSTEM}\n\nUser: {t.format(c=c)}\n\n Response:" for t in _TEMPLATES for c in captions[::7]]
    lines += [_TRACE.format(c=c) for c in captions[::3]]
    lines += [c[0].upper() + c[1:] + "." for c in captions]
    return lines


def build_base_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer trained on `corpus` (default `fixture_corpus()`), Gemma-like, without motion tokens.

    Byte-level, so any text round-trips; BOS is added on encode like Gemma's tokenizer;
    special tokens take ids 0..5 (`<pad>`, `<eos>`, `<bos>`, `<unk>`, `<start_of_turn>`,
    `<end_of_turn>`). The stand-in for the stock Gemma-2 tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(fixture_corpus() if corpus is None else corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", add_bos_token=True, add_eos_token=False,
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    return tokenizer


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """`build_base_tokenizer(corpus, vocab_size)` plus the 514 motion tokens, in order."""
    tokenizer = build_base_tokenizer(corpus, vocab_size)
    add_motion_tokens(tokenizer)
    return tokenizer


def build_llm(tokenizer: Any, seed: int, hidden_size: int, num_layers: int, *, heads: int = 4,
              kv_heads: int = 2, head_dim: int | None = None, intermediate_size: int | None = None) -> tuple[Any, Any]:
    """A small Gemma2ForCausalLM (fp32, random weights from the seed) and its generation config.

    Gemma-2's real architecture (soft-capping, sliding window, tied embeddings) at any size;
    `head_dim` defaults to hidden_size / heads, `intermediate_size` to 2 x hidden_size.
    """
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    head_dim = head_dim or max(hidden_size // heads, 8)
    eos_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, query_pre_attn_scalar=head_dim, max_position_embeddings=8192,
        sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="eager", dtype="float32")
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config).float().eval()
    generation = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids,
                                  pad_token_id=tokenizer.pad_token_id)
    return model, generation


def _build_vqvae(skeleton: Skeleton, seed: int, width: int) -> Any:
    """A narrow VQ-VAE with random weights and a random (not zero) codebook, so codes differ."""
    import torch

    from ..vq.vqvae import VQVAE

    torch.manual_seed(seed)
    model = VQVAE(feature_size=skeleton.feature_size, width=width, code_dim=width, num_codes=512,
                  depth=3, dilation_growth=3, down_t=2, stride_t=2)
    with torch.no_grad():
        model.vqvae.quantizer.codebook.normal_()
    return model.eval()


def feature_statistics(skeleton: Skeleton, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Made-up but plausible mean/std (float32, std > 0) in the dataset's feature layout and units.

    Layout: root yaw velocity, root xz velocity, root height, (J-1) x 3 root-relative
    positions, (J-1) x 6 rotations (6D), J x 3 velocities, 4 foot contacts.
    """
    rng = np.random.default_rng(seed)
    unit = 1.0 / skeleton.metres_per_unit  # dataset units per metre
    j = skeleton.num_joints
    ric_mean = np.stack([rng.uniform(-0.3, 0.3, j - 1), rng.uniform(-0.9, 0.7, j - 1),
                         rng.uniform(-0.1, 0.1, j - 1)], axis=1)
    parts_mean = [[0.0], [0.0, 0.02 * unit], [0.95 * unit], (ric_mean * unit).ravel(),
                  np.tile([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], j - 1), np.zeros(3 * j), np.full(4, 0.5)]
    parts_std = [[0.02], [0.02 * unit] * 2, [0.05 * unit], rng.uniform(0.05, 0.15, 3 * (j - 1)) * unit,
                 rng.uniform(0.1, 0.3, 6 * (j - 1)), rng.uniform(0.01, 0.03, 3 * j) * unit, np.full(4, 0.49)]
    mean = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts_mean])
    std = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts_std])
    assert mean.size == std.size == skeleton.feature_size, (mean.size, skeleton.feature_size)
    return mean.astype(np.float32), std.astype(np.float32)


def _manifest(skeleton: Skeleton, seed: int, stage: int, vqvae: Any, vocab: MotionVocab) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": f"tiny fixture (seed {seed}, untrained: its motion is noise)",
        "stage": stage, "dataset": skeleton.name, "feature_size": skeleton.feature_size,
        "num_joints": skeleton.num_joints, "fps": skeleton.fps, "fixture": True, "seed": seed,
        "vqvae": {"file": "vqvae.safetensors", **vqvae.hparams},
        "motion_tokens": vocab.to_manifest(),
        "sources": [],
        # No created_at: a fixture must be byte-identical for the same seed.
        "created_by": created_by("make-fixture"),
    }


def check_replaceable(out_dir: Path, ours: Callable[[dict[str, Any]], bool] = lambda m: m["fixture"] is True,
                      what: str = "a fixture model folder", command: str = "irg-motion make-fixture") -> None:
    """Refuse to replace anything but an empty folder or one whose manifest `ours` accepts."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ModelFolderError(f"{out_dir} exists and is not a folder: choose another path for `{command}`")
    if not any(out_dir.iterdir()):
        return
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            if ours(read_manifest(out_dir, check_files=False)):
                return
        except ModelFolderError:
            pass
    raise ModelFolderError(f"{out_dir} is not empty and is not {what}: refusing to overwrite "
                           f"it; choose an empty or new folder for `{command}`")


def make_fixture(out_dir: str | Path, seed: int = 0, *, dataset: str = "HumanML3D", stage: int = 2,
                 hidden_size: int = 64, num_layers: int = 2, vq_width: int = 32) -> Path:
    """Write a complete tiny model folder to `out_dir`, deterministically from `seed`; return its path.

    The folder is built next to `out_dir` and renamed into place, so a crash never leaves
    half a folder. An existing fixture is replaced; any other non-empty folder is refused.
    """
    import torch

    from ..vq.vqvae import save_vqvae

    if not isinstance(hidden_size, int) or hidden_size < 32 or hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of 4, at least 32 (4 heads), not {hidden_size!r}")
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, not {stage!r}")
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    skeleton = skeleton_for(dataset)
    out_dir = Path(out_dir).expanduser().absolute()
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
            tokenizer = build_tokenizer()
            llm, generation = build_llm(tokenizer, seed, hidden_size, num_layers)
            vqvae = _build_vqvae(skeleton, seed, vq_width)
        save_llm(work / "llm", llm, generation, tokenizer)
        save_vqvae(vqvae, work / "vqvae.safetensors")
        mean, std = feature_statistics(skeleton, seed)
        np.save(work / "mean.npy", mean)
        np.save(work / "std.npy", std)
        write_manifest(work, _manifest(skeleton, seed, stage, vqvae, MotionVocab.from_tokenizer(tokenizer)))
        make_readable(work)
        swap_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def save_llm(llm_dir: Path, llm: Any, generation: Any, tokenizer: Any) -> None:
    """save_pretrained the model (safetensors, fp32), its generation config and tokenizer."""
    from ..llm.loader import hf_progress_bars_off

    with hf_progress_bars_off():  # a bar for a 1 MB file is noise on the CLI
        llm.save_pretrained(llm_dir)
    generation.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)


def swap_into_place(work: Path, out_dir: Path, attempts: int = 3) -> None:
    """Rename the finished folder to `out_dir`, moving an old fixture aside first.

    Retried: another process building the same fixture may put a folder there in between.
    """
    for attempt in range(attempts):
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
        try:
            os.replace(work, out_dir)
            return
        except OSError:
            if attempt == attempts - 1:
                raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
