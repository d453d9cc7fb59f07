"""`irg-motion convert`: released IRG-MotionLLM pieces -> one model folder (docs/model-folder.md).

Inputs: an IRG checkpoint (`torch.save` file or safetensors), the Gemma-2-2b-it config and
tokenizer (a local folder, or a hub id fetched with the user's token), the T2M-GPT VQ-VAE
(`vqvae.pth`, or the `net.` entries of a wrapper save), and the feature mean/std.

Checkpoint layouts accepted (interface section 6), all read with `weights_only=True`:
  - `{"state_dict": {...}, "epoch": ...}` (resume info is reported, not kept) or a bare state dict;
  - LLM names plain, `llm.`-prefixed, or PEFT-wrapped (`base_model.model.`, `.base_layer.`,
    `.modules_to_save.<adapter>.` are stripped, `.original_module.` copies dropped);
  - optional `embeddings` / `lm_head` entries, the full (V+514, H) matrix or the 514 new rows,
    written in that order into the one tied matrix (so `lm_head` wins), as the reference loader does;
  - the VQ-VAE under `net.` (then the `vqvae` argument is optional; an explicit file wins).
Unmerged LoRA adapters (`lora_A` / `lora_B`) are refused, not merged: the merge scale
(alpha / r) is not stored in the state dict, and a guessed scale would silently give a
different model. LLM weights the checkpoint lacks are taken from the base folder's weights
when it has them (the reference loader keeps the base weights for them too), else refused.

Everything is built in a temporary folder next to `out_dir` and renamed into place only
after it has been verified, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..wire.manifest import (FORMAT, FORMAT_VERSION, ModelFolderError, created_by, llm_config_problem, make_readable,
                             read_manifest, sha256_file, write_manifest)
from ..rig_math.skeleton import Skeleton, skeleton_for
from ..llm.vocab import NUM_MOTION_CODES, MotionVocab, MotionVocabError, add_motion_tokens
from ..vq.weights import read_weights

__all__ = ["ConvertError", "convert", "add_convert_arguments", "run_convert", "STOCK_TOKENIZER_FILES",
           "StderrProgress"]

# The stock google/gemma-2-2b-it tokenizer files: name -> (bytes, sha256) (interface section 1).
STOCK_TOKENIZER_FILES = {
    "tokenizer.json": (17_525_357, "3f289bc05132635a8bc7aca7aa21255efd5e18f3710f43e3cdb96bcd41be4922"),
    "tokenizer.model": (4_241_003, "61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2"),
}
# What a hub download fetches: config and tokenizer only, never the 5 GB of base weights.
BASE_FILE_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
                      "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]
DTYPES = ("bfloat16", "float32")
NEW_ROWS = NUM_MOTION_CODES + 2  # <Motion>, </Motion>, <Motion_0..511>
EMBED_KEY = "model.embed_tokens.weight"
HEAD_KEY = "lm_head.weight"
# Non-persistent buffers some older transformers versions saved: recomputed, never loaded.
_IGNORED_KEY = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$|(^|\.)embed_scale$")
_STAGE_IN_NAME = re.compile(r"stage[\s_-]*([123])(?!\d)", re.IGNORECASE)

Progress = Callable[[str, float], None]
Log = Callable[[str], None]


class ConvertError(ValueError):
    """Inputs that cannot make a model folder; the message names the file, the problem and the fix."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived during a conversion (raised so the temporary folder is removed)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise Interrupted instead of ending the process at
    once, so clean-up runs. Handlers can only be set in the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def _prepare_output(out: Path, log: Log) -> None:
    """Create the output's parent folder (ConvertError when it cannot be) and remove the
    temporary folders that killed conversions left there."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.TemporaryFile(dir=out.parent)
        probe.close()
    except OSError as exc:
        raise ConvertError(f"{out}: cannot write there ({exc.strerror or exc}): choose an --out in a folder "
                           "you can write") from None
    for path in out.parent.glob(".*.converting-*"):
        found = re.search(r"\.converting-(\d+)-", path.name)
        if path.is_dir() and found and not _alive(int(found.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path}, the temporary folder of a conversion whose process "
                f"({found.group(1)}) is gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# ---------------------------------------------------------------- progress and messages

class StderrProgress:
    """Progress on stderr: `  step  42%` redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.step = ""
        self.shown = -1

    def __call__(self, step: str, fraction: float) -> None:
        pct = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if step != self.step:
            if self.step and self.tty and self.shown < 100:
                self.stream.write("\n")
            self.step, self.shown = step, -1
            if not self.tty:
                self.stream.write(f"  {step} ...\n")
        if not self.tty or pct == self.shown:
            return
        self.shown = pct
        self.stream.write(f"\r  {step} {pct:3d}%{'' if pct < 100 else chr(10)}")
        self.stream.flush()


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs: arrays, base, tokenizer

def _check_inputs(paths: dict[str, Path | None], out_dir: Path, dtype: str, stage: int | None) -> None:
    if dtype not in DTYPES:
        raise ConvertError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)} "
                           "(the folder holds full-precision weights; 4-bit is chosen at load time)")
    if stage is not None and stage not in (1, 2, 3):
        raise ConvertError(f"stage must be 1, 2 or 3, not {stage!r}")
    for role, path in paths.items():
        if path is not None and not path.is_file():
            raise ConvertError(f"{path}: {role} file not found")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConvertError(f"{out_dir}: the output folder exists and is not empty; choose a new folder "
                           "or remove the old one (conversion never overwrites)")


def _load_stat(path: Path, what: str, skeleton: Skeleton) -> np.ndarray:
    """A mean or std vector: float32, the dataset's feature size, finite."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConvertError(f"{path}: not a readable .npy array of numbers ({exc})") from None
    arr = np.asarray(arr).squeeze()
    if arr.ndim != 1 or arr.size != skeleton.feature_size:
        raise ConvertError(f"{path}: {what} has shape {tuple(np.shape(arr))}, but {skeleton.name} features "
                           f"have {skeleton.feature_size} values (HumanML3D 263, KIT-ML 251): "
                           "check the file and --dataset")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ConvertError(f"{path}: {what} holds non-finite or non-numeric values")
    if what == "std" and np.any(arr <= 0):
        raise ConvertError(f"{path}: std has {int(np.sum(arr <= 0))} values <= 0; a standard deviation "
                           "must be positive (is this the mean file?)")
    return arr.astype(np.float32)


def _resolve_base(base: str | Path, token: str | None, log: Log) -> Path:
    """A local folder as is, else a hub id: download config and tokenizer files only."""
    local = Path(base).expanduser()
    if local.is_dir():
        return local.absolute()
    name = str(base)
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConvertError(f"{base}: base is neither a folder (with the Gemma-2-2b-it config.json and "
                           "tokenizer files) nor a hub id like google/gemma-2-2b-it")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    log(f"base: fetching config and tokenizer of {name} from the Hugging Face hub (no weights)")
    try:
        return Path(snapshot_download(name, allow_patterns=BASE_FILE_PATTERNS, token=token))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise ConvertError(
            f"{name}: not a local folder, and it is not in the hub cache while the hub is offline "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!s} or no network): pass --base a folder "
            "holding the Gemma-2-2b-it config.json and tokenizer files, or go online with a token "
            f"(--token or `hf auth login`). Detail: {str(exc).splitlines()[0]}") from None
    except GatedRepoError:
        raise ConvertError(f"{name}: the model is gated: accept the Gemma terms on its hub page with your account "
                           "and pass --token (or `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ConvertError(f"{name}: no such hub repository (or it is private and no valid token was given)") from None
    except OSError as exc:  # network failures, disk errors
        raise ConvertError(f"{name}: download failed ({exc}); pass --base a local folder instead") from None


def _stock_tokenizer(base_dir: Path) -> tuple[bool, str]:
    """(is stock, a sentence) from the sizes and hashes of the base tokenizer files."""
    present = {n: base_dir / n for n in STOCK_TOKENIZER_FILES if (base_dir / n).is_file()}
    if not present:
        return False, f"{base_dir} has neither tokenizer.json nor tokenizer.model"
    differing = [n for n, p in present.items()
                 if p.stat().st_size != STOCK_TOKENIZER_FILES[n][0] or sha256_file(p) != STOCK_TOKENIZER_FILES[n][1]]
    if differing:
        return False, (f"{' and '.join(differing)} in {base_dir} differ(s) from the stock google/gemma-2-2b-it "
                       "files; the real IRG checkpoints need the stock tokenizer, or the token ids will not match")
    return True, f"{', '.join(present)} match the stock google/gemma-2-2b-it tokenizer"


def _load_base(base_dir: Path) -> tuple[Any, Any, MotionVocab]:
    """(Gemma-2 config, tokenizer with the 514 motion tokens, their ids; V text tokens = start_id)."""
    from transformers import AutoConfig, AutoTokenizer

    if not (base_dir / "config.json").is_file():
        raise ConvertError(f"{base_dir}: config.json is missing: --base must hold the Gemma-2-2b-it config")
    try:
        raw = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConvertError(f"{base_dir}: config.json cannot be read ({exc})") from None
    problem = llm_config_problem(raw) if isinstance(raw, dict) else "config.json must hold a JSON object"
    if problem:  # before a model is built from it
        raise ConvertError(f"{base_dir}: {problem}")
    try:
        config = AutoConfig.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ConvertError(f"{base_dir}: the config or tokenizer cannot be read ({exc})") from None
    if config.model_type != "gemma2" or not getattr(config, "tie_word_embeddings", True):
        raise ConvertError(f"{base_dir}: config.json describes a {config.model_type!r} model"
                           f"{'' if config.model_type != 'gemma2' else ' with untied embeddings'}; "
                           "IRG-MotionLLM is Gemma-2-2b-it (tied embeddings)")
    try:
        vocab = add_motion_tokens(tokenizer)
    except MotionVocabError as exc:
        raise ConvertError(f"{base_dir}: tokenizer: {exc}") from None
    if vocab.all_ids[-1] + 1 != len(tokenizer):
        raise ConvertError(f"{base_dir}: the tokenizer has {len(tokenizer)} tokens but the motion tokens end at "
                           f"id {vocab.all_ids[-1]}: tokens were added after them; start from the base tokenizer")
    config.vocab_size = len(tokenizer)  # what resize_token_embeddings(len(tokenizer)) did in training
    return config, tokenizer, vocab


# ---------------------------------------------------------------- reading the checkpoint

@dataclass
class _Checkpoint:
    """A checkpoint split into its parts, names normalised."""

    llm: dict[str, Any] = field(default_factory=dict)      # plain Gemma-2 parameter names
    extras: dict[str, Any] = field(default_factory=dict)   # "embeddings", "lm_head"
    vqvae: dict[str, Any] = field(default_factory=dict)    # `vqvae.encoder...` (from `net.`)
    resume: dict[str, Any] = field(default_factory=dict)   # epoch etc., reported only
    wrapped: list[str] = field(default_factory=list)       # which wrappers were seen ("llm.", "PEFT")


def _llm_name(key: str) -> str | None:
    """A plain Gemma-2 parameter name, or None for a PEFT `original_module` copy (superseded)."""
    name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
    if ".original_module." in name:
        return None
    name = name.replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def _split_checkpoint(path: Path, obj: Any) -> _Checkpoint:
    import torch

    ckpt = _Checkpoint()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        ckpt.resume = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ConvertError(f"{path}: expected a state dict of tensors (or a dict with 'state_dict'), "
                           f"got {'an empty dict' if isinstance(obj, dict) else type(obj).__name__}")
    lora: list[str] = []
    origin: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConvertError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: "
                               "not a state dict layout the converter knows (docs/model-setup.md)")
        if key in ("embeddings", "lm_head"):
            ckpt.extras[key] = value
            continue
        if key.startswith("net."):
            ckpt.vqvae[key[len("net."):]] = value
            continue
        rest = key
        if rest.startswith("llm."):
            rest = rest[len("llm."):]
            _note(ckpt.wrapped, "llm.")
        if rest.startswith("base_model.model.") or ".base_layer." in rest or ".modules_to_save." in rest:
            _note(ckpt.wrapped, "PEFT")
        if re.search(r"\.lora_[A-Za-z_]+", rest):
            lora.append(key)
            continue
        name = _llm_name(rest)
        if name is None or _IGNORED_KEY.search(name):
            continue
        if name in ckpt.llm:
            raise ConvertError(f"{path}: both {origin[name]!r} and {key!r} name the parameter {name!r}; "
                               "the checkpoint mixes two saves")
        ckpt.llm[name], origin[name] = value, key
    if lora:
        raise ConvertError(
            f"{path}: holds {len(lora)} unmerged LoRA adapter weights (first: {lora[0]}); the converter does not "
            "merge adapters (the scale alpha/r is not stored in the file). Merge them into the base weights "
            "first (peft `merge_and_unload()`), save the merged state dict, and convert that")
    return ckpt


def _note(seen: list[str], what: str) -> None:
    if what not in seen:
        seen.append(what)


def _guess_stage(path: Path, ckpt: _Checkpoint) -> tuple[int | None, str]:
    """(stage, how it was found) from the file or folder name, else from a whole-wrapper save."""
    for part in (path.name, path.parent.name):
        found = _STAGE_IN_NAME.search(part)
        if found:
            return int(found.group(1)), f"guessed from the name {part!r}"
    if "llm." in ckpt.wrapped:
        return 3, "guessed from the `llm.` prefix of a whole-wrapper save (stage 3)"
    return None, "unknown"


# ---------------------------------------------------------------- assembling the LLM weights

def _meta_model(config: Any, dtype: Any) -> Any:
    """The Gemma-2 model on the meta device: names and shapes, no memory, no random init."""
    import torch
    from transformers import Gemma2ForCausalLM

    config.dtype = dtype
    with torch.device("meta"):
        return Gemma2ForCausalLM(config)


class _BaseWeights:
    """Lazy access to the base folder's safetensors weights (optional: only for keys a checkpoint lacks)."""

    def __init__(self, base_dir: Path) -> None:
        self.where: dict[str, Path] = {}
        index = base_dir / "model.safetensors.index.json"
        if index.is_file():
            mapping = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            self.where = {k: base_dir / f for k, f in mapping.items()}
        elif (base_dir / "model.safetensors").is_file():
            from safetensors import safe_open
            with safe_open(str(base_dir / "model.safetensors"), "pt") as fh:
                self.where = {k: base_dir / "model.safetensors" for k in fh.keys()}

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str) -> Any:
        from safetensors import safe_open
        with safe_open(str(self.where[key]), "pt") as fh:
            return fh.get_tensor(key)


def _apply_rows(path: Path, what: str, matrix: Any, rows: Any, text_tokens: int) -> Any:
    """Write a full (V+514, H) matrix or the 514 new rows into the tied embedding matrix."""
    import torch

    total = text_tokens + NEW_ROWS
    if rows.ndim != 2 or rows.shape[0] not in (total, NEW_ROWS):
        raise ConvertError(
            f"{path}: {what} has shape {tuple(rows.shape)}; expected {total} rows (the {text_tokens} tokens of the "
            f"base tokenizer + {NEW_ROWS} motion tokens) or the {NEW_ROWS} motion-token rows alone: the checkpoint "
            "was trained with another vocabulary, or --base points at another tokenizer")
    if rows.shape[0] == total:
        return rows
    if matrix is None:
        raise ConvertError(f"{path}: {what} holds only the {NEW_ROWS} motion-token rows, and neither the checkpoint "
                           "nor the base folder has the text-token embedding to put them into")
    return torch.cat([matrix[:text_tokens], rows.to(matrix.dtype)], dim=0)


def _assemble_embedding(path: Path, ckpt: _Checkpoint, base_w: _BaseWeights, text_tokens: int,
                        log: Log) -> tuple[Any, bool]:
    """The tied (V+514, H) matrix in the reference order: embed_tokens, `embeddings`, `lm_head`.

    Returns (matrix, taken from base weights). A `lm_head.weight` key is ignored like the
    reference loader ignores it (tied models list only the embedding), unless it is the only one.
    """
    total = text_tokens + NEW_ROWS
    matrix, from_base = ckpt.llm.pop(EMBED_KEY, None), False
    head = ckpt.llm.pop(HEAD_KEY, None)
    if matrix is None and head is not None:
        matrix, head = head, None
    if matrix is None and EMBED_KEY in base_w:
        matrix, from_base = base_w.get(EMBED_KEY), True
    if matrix is not None:
        if matrix.ndim != 2 or matrix.shape[0] not in (total, text_tokens):
            raise ConvertError(
                f"{path}: the token embedding has shape {tuple(matrix.shape)}; expected {total} rows (the "
                f"{text_tokens} tokens of the base tokenizer + {NEW_ROWS} motion tokens) or {text_tokens}: "
                "the checkpoint was trained with another vocabulary, or --base points at another tokenizer")
    if head is not None and matrix is not None and head.shape == matrix.shape and not _same(head, matrix):
        log(f"note: {HEAD_KEY} differs from {EMBED_KEY}; the model ties them and, like the reference loader, "
            f"the embedding is used (give an `lm_head` entry to override)")
    for what in ("embeddings", "lm_head"):
        if what in ckpt.extras:
            matrix = _apply_rows(path, f"the {what!r} entry", matrix, ckpt.extras[what], text_tokens)
    if matrix is None:
        raise ConvertError(f"{path}: no token embedding ({EMBED_KEY}, 'embeddings' or 'lm_head'), and the base "
                           "folder has no weights to take it from")
    if matrix.shape[0] != total:
        raise ConvertError(f"{path}: the token embedding has {matrix.shape[0]} rows, the base vocabulary without "
                           f"the motion tokens, and no 'embeddings' or 'lm_head' entry holds the {NEW_ROWS} "
                           "motion-token rows: this is not an IRG-MotionLLM checkpoint")
    return matrix, from_base


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality (NaN-safe: a NaN in a weight must still compare equal to itself)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)))


def _assemble_state(path: Path, base_dir: Path, ckpt: _Checkpoint, model: Any, text_tokens: int, dtype: Any,
                    log: Log, progress: Progress) -> dict[str, Any]:
    """Every parameter of `model`, from the checkpoint (base weights for keys it lacks), cast to `dtype`."""
    base_w = _BaseWeights(base_dir)
    embedding, embed_from_base = _assemble_embedding(path, ckpt, base_w, text_tokens, log)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != HEAD_KEY}
    unexpected = sorted(set(ckpt.llm) - set(expected))
    if unexpected:
        raise ConvertError(f"{path}: {len(unexpected)} entries are not Gemma-2 parameters of this config "
                           f"(first: {', '.join(unexpected[:4])}): not an IRG-MotionLLM checkpoint, or --base "
                           "points at another model's config")
    missing = [k for k in expected if k != EMBED_KEY and k not in ckpt.llm]
    lacking = [k for k in missing if k not in base_w]
    if lacking:
        where = "and the base folder has no weights" if not base_w.where else "nor does the base folder's weights"
        raise ConvertError(f"{path}: {len(lacking)} LLM weights are missing (first: {', '.join(lacking[:4])}), "
                           f"{where}: the file is not a complete IRG-MotionLLM checkpoint")
    if missing or embed_from_base:
        log(f"note: {len(missing) + embed_from_base} weights not in the checkpoint were taken from the base "
            f"weights in {base_dir} (as the reference loader keeps them)")
    state: dict[str, Any] = {}
    for i, key in enumerate(expected):
        tensor = embedding if key == EMBED_KEY else (ckpt.llm[key] if key in ckpt.llm else base_w.get(key))
        if tuple(tensor.shape) != expected[key]:
            raise ConvertError(f"{path}: {key} has shape {tuple(tensor.shape)}, but the Gemma-2 config in "
                               f"{base_dir} expects {expected[key]}: checkpoint and base config do not match")
        state[key] = tensor.to(dtype).contiguous()
        progress("preparing weights", (i + 1) / len(expected))
    state[HEAD_KEY] = state[EMBED_KEY]
    return state


# ---------------------------------------------------------------- writing and verifying

def _write_llm(work: Path, config: Any, tokenizer: Any, base_dir: Path, model: Any, state: dict[str, Any]) -> None:
    """save_pretrained the model (safetensors), a generation config and the tokenizer into work/llm."""
    from transformers import GenerationConfig

    from ..llm.loader import hf_progress_bars_off

    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    eos = _eos_ids(config, tokenizer, base_dir)
    config.eos_token_id = eos
    if (base_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(base_dir, local_files_only=True)
    else:
        generation = GenerationConfig()
    generation.eos_token_id = eos
    generation.bos_token_id = tokenizer.bos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    llm_dir = work / "llm"
    with hf_progress_bars_off():
        model.save_pretrained(llm_dir)
    generation.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)


def _eos_ids(config: Any, tokenizer: Any, base_dir: Path) -> list[int]:
    """Generation stops: the base's eos ids, the tokenizer's eos and <end_of_turn> (Gemma: 1 and 107)."""
    from ..llm.loader import eos_token_ids

    gen_file = base_dir / "generation_config.json"
    generation_eos = None
    if gen_file.is_file():
        generation_eos = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
    return eos_token_ids(generation_eos, config, tokenizer)


def _vqvae_hparams(state: dict[str, Any], skeleton: Skeleton, log: Log) -> dict[str, int]:
    """VQ-VAE constructor arguments: the published ones, width and code size read from the weights.

    The codebook size stays 512 (one code per motion token) and is checked by the strict load.
    """
    width = state.get("vqvae.encoder.model.0.weight")
    codebook = state.get("vqvae.quantizer.codebook")
    hp = {"feature_size": skeleton.feature_size,
          "width": int(width.shape[0]) if getattr(width, "ndim", 0) == 3 else 512,
          "code_dim": int(codebook.shape[1]) if getattr(codebook, "ndim", 0) == 2 else 512}
    if (hp["width"], hp["code_dim"]) != (512, 512):
        log(f"note: VQ-VAE width {hp['width']}, code size {hp['code_dim']} (the published model has 512, 512)")
    return hp


def _write_vqvae(work: Path, vqvae_path: Path | None, ckpt_path: Path, ckpt: _Checkpoint, skeleton: Skeleton,
                 log: Log) -> Any:
    """Strictly load the VQ-VAE (file, else the checkpoint's `net.` entries) and write vqvae.safetensors."""
    from safetensors.torch import save_file

    from ..vq.vqvae import VQVAEError, load_vqvae, read_state_dict, save_vqvae

    target = work / "vqvae.safetensors"
    if vqvae_path is not None:
        if ckpt.vqvae:
            log(f"note: the checkpoint also holds a VQ-VAE under 'net.'; using {vqvae_path} as given")
        try:
            state = read_state_dict(vqvae_path)
        except VQVAEError as exc:
            raise ConvertError(str(exc)) from None
        source, where = vqvae_path, ""
    elif ckpt.vqvae:
        save_file({k: v.float().contiguous() for k, v in ckpt.vqvae.items()}, str(target))
        state, source, where = ckpt.vqvae, target, f"{ckpt_path}: the VQ-VAE under 'net.' does not load: "
    else:
        raise ConvertError(f"{ckpt_path}: holds no VQ-VAE (no 'net.' entries): pass --vqvae vqvae.pth "
                           "(the T2M-GPT VQ-VAE of the Motion-Agent release)")
    try:
        model = load_vqvae(source, **_vqvae_hparams(state, skeleton, log))
    except VQVAEError as exc:
        raise ConvertError(where + str(exc).replace(f"{target}: ", "")) from None
    save_vqvae(model, target)
    return model


def _sources(files: list[tuple[str, Path]], progress: Progress) -> list[dict[str, Any]]:
    """The manifest's "sources": role, file, sha256 and size of every input file."""
    total = sum(p.stat().st_size for _, p in files) or 1
    done, out = 0, []
    progress("hashing the source files", 0.0)
    for role, path in files:
        out.append({"role": role, "file": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size})
        done += path.stat().st_size
        progress("hashing the source files", done / total)
    return out


def _manifest(skeleton: Skeleton, stage: int, vqvae: Any, vocab: MotionVocab, sources: list[dict[str, Any]],
              dtype: str, parameters: int, stock: bool) -> dict[str, Any]:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": f"IRG-MotionLLM-{skeleton.name} stage {stage}",
        "stage": stage, "dataset": skeleton.name, "feature_size": skeleton.feature_size,
        "num_joints": skeleton.num_joints, "fps": skeleton.fps, "fixture": False,
        "vqvae": {"file": "vqvae.safetensors", **vqvae.hparams},
        "motion_tokens": vocab.to_manifest(),
        "dtype": dtype, "parameters": parameters, "stock_tokenizer": stock,
        "sources": sources,
        "created_by": created_by("convert"),
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _verify(work: Path, state: dict[str, Any], vocab: MotionVocab, vq_hparams: dict[str, int]) -> None:
    """Reload what was written: config, tokenizer layout, a few tensors, the VQ-VAE, the manifest."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    from ..vq.vqvae import load_vqvae

    llm_dir = work / "llm"
    config = AutoConfig.from_pretrained(llm_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    reloaded = MotionVocab.from_tokenizer(tokenizer)
    if reloaded != vocab or config.vocab_size != len(tokenizer):
        raise ConvertError(f"verification failed: the written tokenizer/config ({reloaded}, vocab_size "
                           f"{config.vocab_size}, {len(tokenizer)} tokens) differ from what was built ({vocab})")
    layers = config.num_hidden_layers
    keys = [EMBED_KEY, "model.norm.weight", "model.layers.0.self_attn.q_proj.weight",
            f"model.layers.{layers - 1}.mlp.down_proj.weight"]
    with safe_open(str(llm_dir / "model.safetensors"), "pt") as fh:
        for key in keys:
            if not _same(fh.get_tensor(key), state[key]):
                raise ConvertError(f"verification failed: {key} in llm/model.safetensors differs from the checkpoint")
    load_vqvae(work / "vqvae.safetensors", **vq_hparams)
    read_manifest(work)


# ---------------------------------------------------------------- the conversion

def convert(irg_checkpoint: str | Path, base: str | Path, vqvae: str | Path | None, mean: str | Path,
            std: str | Path, out_dir: str | Path, *, stage: int | None = None, dataset: str = "HumanML3D",
            dtype: str = "bfloat16", token: str | None = None, progress: Progress | None = None,
            log: Log | None = None) -> Path:
    """Convert released IRG-MotionLLM pieces into a model folder at `out_dir`; return its path.

    `base` is a folder with the Gemma-2-2b-it config and tokenizer (weights optional: used only
    for weights the checkpoint lacks) or a hub id (config and tokenizer are downloaded with
    `token`). `vqvae` may be None when the checkpoint holds the VQ-VAE under `net.`.
    `stage` is guessed from the file name (or a whole-wrapper save) when None. `progress(step,
    fraction)` reports long steps; `log(message)` the findings (default: stderr).
    Raises ConvertError naming the file and the problem; on any failure nothing is left at `out_dir`.
    """
    import torch

    progress = progress or StderrProgress()
    log = log or _stderr_log
    started = time.monotonic()
    ckpt_path = Path(irg_checkpoint).expanduser().absolute()
    vq_path = Path(vqvae).expanduser().absolute() if vqvae is not None else None
    mean_path, std_path = Path(mean).expanduser().absolute(), Path(std).expanduser().absolute()
    out = Path(out_dir).expanduser().absolute()
    try:
        skeleton = skeleton_for(dataset)
    except ValueError as exc:
        raise ConvertError(str(exc)) from None
    _check_inputs({"IRG checkpoint": ckpt_path, "VQ-VAE": vq_path, "mean": mean_path, "std": std_path},
                  out, dtype, stage)
    _prepare_output(out, log)
    mean_arr = _load_stat(mean_path, "mean", skeleton)
    std_arr = _load_stat(std_path, "std", skeleton)

    base_dir = _resolve_base(base, token, log)
    stock, stock_text = _stock_tokenizer(base_dir)
    log(f"tokenizer: {stock_text}" if stock else f"warning: not the stock Gemma-2-2b-it tokenizer: {stock_text}")
    config, tokenizer, vocab = _load_base(base_dir)

    progress("reading checkpoint", 0.0)
    ckpt = _split_checkpoint(ckpt_path, read_weights(ckpt_path, ConvertError))
    progress("reading checkpoint", 1.0)
    if ckpt.resume:
        log(f"checkpoint: resume info {', '.join(f'{k}={_short(v)}' for k, v in ckpt.resume.items())}")
    if ckpt.wrapped:
        log(f"checkpoint: stripped wrapper names ({', '.join(ckpt.wrapped)})")
    how = "as given"
    if stage is None:
        stage, how = _guess_stage(ckpt_path, ckpt)
        if stage is None:
            raise ConvertError(f"{ckpt_path}: cannot tell the training stage from the file name or contents: "
                               "pass --stage 1, 2 or 3 (stage 1 answers single-task prompts; 2 and 3 write "
                               "the interleaved reasoning trace)")
    log(f"stage: {stage} ({how})")

    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        raise ConvertError(f"{out.parent}: cannot create a temporary folder ({exc.strerror or exc})") from None
    try:
        vq_model = _write_vqvae(work, vq_path, ckpt_path, ckpt, skeleton, log)
        torch_dtype = getattr(torch, dtype)
        model = _meta_model(config, torch_dtype)
        parameters = sum(p.numel() for p in model.parameters())
        _check_disk(out.parent, parameters * torch_dtype.itemsize)
        state = _assemble_state(ckpt_path, base_dir, ckpt, model, vocab.start_id, torch_dtype, log, progress)
        progress("writing llm/model.safetensors", 0.0)
        _write_llm(work, config, tokenizer, base_dir, model, state)
        progress("writing llm/model.safetensors", 1.0)
        np.save(work / "mean.npy", mean_arr)
        np.save(work / "std.npy", std_arr)
        files = [("irg_checkpoint", ckpt_path), *([("vqvae", vq_path)] if vq_path else []),
                 ("mean", mean_path), ("std", std_path)]
        files += [(f"base_{n.split('.')[0]}", base_dir / n) for n in ("config.json", *STOCK_TOKENIZER_FILES)
                  if (base_dir / n).is_file()]
        sources = _sources(files, progress)
        write_manifest(work, _manifest(skeleton, stage, vq_model, vocab, sources, dtype, parameters, stock))
        progress("verifying", 0.0)
        _verify(work, state, vocab, vq_model.hparams)
        progress("verifying", 1.0)
        make_readable(work)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(work, out)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: a message, not a traceback
        shutil.rmtree(work, ignore_errors=True)
        raise ConvertError(f"{out}: writing the model folder failed ({exc}); nothing was left behind") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(_summary(out, parameters, dtype, vocab, skeleton, stage, stock, time.monotonic() - started))
    return out


def _short(value: Any) -> str:
    text = repr(value) if not hasattr(value, "shape") else f"tensor{tuple(value.shape)}"
    return text if len(text) <= 40 else text[:37] + "..."


def _count(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _check_disk(folder: Path, weight_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    need = int(weight_bytes * 1.05) + 50_000_000
    if free < need:
        raise ConvertError(f"{folder}: {free / 1e9:.1f} GB free on disk, the converted model needs about "
                           f"{need / 1e9:.1f} GB: free space or choose another --out")


def _summary(out: Path, parameters: int, dtype: str, vocab: MotionVocab, skeleton: Skeleton, stage: int,
             stock: bool, seconds: float) -> str:
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return "\n".join([
        f"converted in {seconds:.0f} s: {out}",
        f"  LLM         {_count(parameters)} parameters, {dtype}, stage {stage}",
        f"  motion ids  <Motion> {vocab.start_id}, </Motion> {vocab.end_id}, "
        f"<Motion_0..{vocab.count - 1}> {vocab.first_id}..{vocab.first_id + vocab.count - 1}",
        f"  dataset     {skeleton.name}: {skeleton.feature_size} features, {skeleton.num_joints} joints, "
        f"{skeleton.fps:g} fps",
        f"  tokenizer   {'stock google/gemma-2-2b-it' if stock else 'not the stock Gemma-2-2b-it tokenizer'}",
        f"  folder      {size / 1e9:.2f} GB" if size >= 1e7 else f"  folder      {size / 1e6:.2f} MB",
    ])


# ---------------------------------------------------------------- command line

def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `irg-motion convert` options to `parser` (the CLI registers the subcommand)."""
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="IRG-MotionLLM checkpoint (.pth/.bin torch.save file or .safetensors)")
    parser.add_argument("--base", required=True, metavar="DIR_OR_HUB_ID",
                        help="folder with the Gemma-2-2b-it config.json and tokenizer files, or the hub id "
                             "google/gemma-2-2b-it (needs network and an accepted license)")
    parser.add_argument("--vqvae", metavar="FILE", default=None,
                        help="T2M-GPT VQ-VAE weights (vqvae.pth); optional if the checkpoint holds them under 'net.'")
    parser.add_argument("--mean", required=True, metavar="FILE", help="feature mean (mean.npy)")
    parser.add_argument("--std", required=True, metavar="FILE", help="feature std (std.npy)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new model folder to write")
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=None,
                        help="training stage of the checkpoint (default: guessed from the file name)")
    parser.add_argument("--dataset", choices=("HumanML3D", "KIT-ML"), default="HumanML3D")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="precision of the saved weights (default bfloat16: 5.2 GB; float32: 10.5 GB)")
    parser.add_argument("--token", default=None,
                        help="Hugging Face token for a hub --base (default: HF_TOKEN or the saved login)")


def run_convert(args: argparse.Namespace) -> int:
    """Run `irg-motion convert` from parsed arguments: 0 on success; 2 for bad input, with a message
    on stderr; 128 + N when signal N (SIGTERM, SIGHUP) stopped it (the temporary folder removed)."""
    from ..vq.vqvae import VQVAEError

    try:
        with _signals_raise():
            convert(args.checkpoint, args.base, args.vqvae, args.mean, args.std, args.out, stage=args.stage,
                    dataset=args.dataset, dtype=args.dtype, token=args.token)
    except (ConvertError, ModelFolderError, VQVAEError, MotionVocabError) as exc:
        print(f"irg-motion convert: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"irg-motion convert: stopped by signal {exc.signum}; nothing was written", file=sys.stderr)
        return 128 + exc.signum
    return 0
