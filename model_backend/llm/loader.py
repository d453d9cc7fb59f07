"""Load the LLM of a model folder at a precision that fits the machine.

Precisions: `fp32`, `bf16`, `nf4` (bitsandbytes 4-bit NF4, double quantisation),
`int8` (bitsandbytes LLM.int8) and `auto`. Gemma-2 never computes in fp16 (its
activations overflow there). Quantisation happens at load time only: a quantised
model is never saved. Nothing is fetched from a hub (`local_files_only=True`) and
no remote code runs.

The `auto` rule, from the weight size estimated from config.json and the free memory
(GPU: `torch.cuda.mem_get_info`; CPU: available RAM):
  - CUDA: bf16 when free memory >= 1.3 x the bf16 weights (the rest holds activations
    and the KV cache of a 1300-token trace), else nf4 when free >= 1.1 x the nf4
    weights, else InsufficientMemoryError. GPUs without native bf16 (before Ampere)
    use fp32 instead of bf16, and nf4 computes in fp32 there.
  - CPU: fp32 when it fits comfortably, else nf4 when it fits, else InsufficientMemoryError.
    Not bf16, even with native bf16: torch 2.13's CPU decode in bf16 measured slower than
    fp32 (2-core AMX machine, benchmarks/engine.py: 1.5 vs 2.4 tokens/s for the 2B model,
    a bf16 mat-vec 7.9 ms against 1.9 ms) and less stable; nf4 was the fastest (5.5
    tokens/s) and smallest, so it is the fallback and worth choosing explicitly.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..wire.manifest import folder_error, inside, llm_config_problem, read_manifest
from .vocab import MotionVocab, MotionVocabError

__all__ = ["LoadedLLM", "LoaderError", "InsufficientMemoryError", "load_llm", "load_llm_parts", "resolve_device",
           "count_parameters", "estimate_weight_bytes", "pick_precision", "hf_progress_bars_off", "PRECISIONS"]

PRECISIONS = ("auto", "nf4", "int8", "bf16", "fp32")
COMFORT = 1.3   # auto takes the larger, faster mode only with this much headroom
MIN_FIT = 1.1   # any mode needs its weights plus 10 %
_GB = 1e9


class LoaderError(RuntimeError):
    """A device or precision request that cannot be served; the message says what to do instead."""


class InsufficientMemoryError(LoaderError):
    """Not enough free memory on the device for the requested (or any) precision."""


@dataclass
class LoadedLLM:
    """A loaded model and everything the engine needs to drive it."""

    model: Any
    tokenizer: Any
    vocab: MotionVocab
    device: str
    precision: str
    why: str
    eos_ids: list[int]
    manifest: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None


# ---------------------------------------------------------------- sizes and the precision rule

def count_parameters(config: Any) -> tuple[int, int]:
    """(parameters in the decoder linears, all other parameters) of a Gemma-2 style config.

    Linears are what bitsandbytes quantises; embeddings (tied or not) and norms stay 16-bit.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    per_layer = h * q_out + 2 * h * kv_out + q_out * h + 3 * h * config.intermediate_size
    embeddings = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", True) else 2)
    norms = layers * 4 * h + h  # Gemma-2: four RMSNorms per layer, one final
    return layers * per_layer, embeddings + norms


def estimate_weight_bytes(config: Any, precision: str) -> int:
    """Bytes the weights take at `precision` (fp32, bf16, nf4, int8), estimated from the config.

    NF4 with double quantisation stores 4 bits per weight plus about 0.127 bits of scales
    (blocks of 64, 8-bit absmax, fp32 per 256 blocks); int8 one byte plus an fp32 scale per row.
    """
    linear, other = count_parameters(config)
    if precision == "fp32":
        return 4 * (linear + other)
    if precision == "bf16":
        return 2 * (linear + other)
    if precision == "nf4":
        return int(linear * (0.5 + 0.127 / 8)) + 2 * other
    if precision == "int8":
        return linear + 4 * (linear // config.hidden_size) + 2 * other  # ~one scale per output row
    raise LoaderError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def _fits(size: int, free: int, factor: float = MIN_FIT) -> bool:
    return free >= factor * size


def _fitting_modes(sizes: dict[str, int], free: int) -> list[str]:
    """Modes that fit, smallest first."""
    return [m for m in sorted(sizes, key=sizes.get) if _fits(sizes[m], free)]


def pick_precision(requested: str, device_type: str, free_bytes: int, sizes: dict[str, int],
                   native_bf16: bool, where: str = "") -> tuple[str, str]:
    """The precision to load at and a sentence saying why (pure: the rule of the module docstring).

    `sizes` maps fp32/bf16/nf4/int8 to estimated weight bytes; `where` names the device.
    Raises LoaderError for an unknown or unsafe precision, InsufficientMemoryError when nothing fits.
    """
    where = where or device_type
    free_txt = f"{free_bytes / _GB:.2f} GB free on {where}"
    if requested not in PRECISIONS:
        hint = " (Gemma-2 overflows in fp16: use bf16 or fp32)" if requested in ("fp16", "float16", "half") else ""
        raise LoaderError(f"unknown precision {requested!r}{hint}: use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, _explain_explicit(requested, device_type, free_bytes, sizes, native_bf16, free_txt)
    if device_type == "cuda":
        big = "bf16" if native_bf16 else "fp32"
        if _fits(sizes[big], free_bytes, COMFORT):
            return big, f"{big}: {_gb(sizes[big])} of weights fit comfortably in {free_txt} (rule: >= {COMFORT} x)"
        if _fits(sizes["nf4"], free_bytes):
            return "nf4", (f"nf4: {big} needs {COMFORT} x {_gb(sizes[big])} but only {free_txt}; "
                           f"4-bit weights take {_gb(sizes['nf4'])}")
        raise _no_fit("auto", sizes, free_bytes, free_txt)
    if _fits(sizes["fp32"], free_bytes, COMFORT):
        return "fp32", (f"fp32: full precision, and faster than bf16 on the CPU; {_gb(sizes['fp32'])} of weights, "
                        f"{free_txt} (nf4 is faster still on the CPU: choose it to trade a little accuracy)")
    if _fits(sizes["nf4"], free_bytes):
        return "nf4", (f"nf4: fp32 needs {COMFORT} x {_gb(sizes['fp32'])} but only {free_txt}; "
                       f"4-bit weights take {_gb(sizes['nf4'])} and decode fastest on the CPU")
    raise _no_fit("auto", sizes, free_bytes, free_txt)


def _explain_explicit(mode: str, device_type: str, free: int, sizes: dict[str, int],
                      native_bf16: bool, free_txt: str) -> str:
    if not _fits(sizes[mode], free):
        raise _no_fit(mode, sizes, free, free_txt)
    why = f"{mode} as requested; {_gb(sizes[mode])} of weights, {free_txt}"
    if mode == "bf16" and device_type == "cpu" and not native_bf16:
        why += "; note: this CPU has no native bf16, fp32 would be faster"
    if mode == "int8":
        why += ("; note: LLM.int8 casts activations to fp16 inside its matmuls, which can overflow "
                "with Gemma-2 (nf4 is safer)")
    if mode in ("nf4", "int8") and not native_bf16:
        why += "; computing in fp32 (no native bf16 here, and never fp16 for Gemma-2)"
    return why


def _no_fit(mode: str, sizes: dict[str, int], free: int, free_txt: str) -> InsufficientMemoryError:
    # Suggest only the recommended modes (int8 casts to fp16 inside, see _explain_explicit).
    fitting = _fitting_modes({m: sizes[m] for m in ("fp32", "bf16", "nf4")}, free)
    what = "no precision fits" if mode == "auto" else f"precision {mode} needs about {_gb(sizes[mode] * MIN_FIT)}"
    if fitting:
        fix = f"use precision={fitting[-1]!r} (about {_gb(sizes[fitting[-1]])} of weights), or free memory"
    else:
        fix = (f"the smallest, nf4, needs about {_gb(sizes['nf4'] * MIN_FIT)}: free memory (close other "
               "programs using the device), or run the backend on a machine with more memory")
    return InsufficientMemoryError(f"{what}, but there are {free_txt}; {fix}")


def _gb(n: float) -> str:
    return f"{n / _GB:.2f} GB" if n >= 0.01 * _GB else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- device facts

def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda:0' when CUDA is available, else 'cpu'; checks an explicit request."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise LoaderError(f"device {device!r} requested but CUDA is not available to this Python "
                              f"(torch {torch.__version__}, a CPU build or no NVIDIA driver): use device='cpu' "
                              "or 'auto', or install the CUDA build of torch (`make envs` on a machine with the driver)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise LoaderError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return f"cuda:{index}"
    raise LoaderError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _device_facts(device: str) -> tuple[int, bool, str]:
    """(free bytes, native bf16, a readable device name)."""
    import torch

    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(device)
        return free, torch.cuda.is_bf16_supported(including_emulation=False), \
            f"{device} ({torch.cuda.get_device_name(device)})"
    import psutil

    try:  # private but long-standing: true with AVX512-BF16 or AMX
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return psutil.virtual_memory().available, native, "cpu RAM"


# ---------------------------------------------------------------- folder checks

def _check_llm_dir(model_dir: Path) -> Path:
    llm_dir = model_dir / "llm"
    if not llm_dir.is_dir():
        raise folder_error(model_dir, "the llm/ folder is missing")
    needed = {"config.json": ("config.json",),
              "tokenizer.json": ("tokenizer.json", "tokenizer.model"),
              "model.safetensors": ("model.safetensors", "model.safetensors.index.json")}
    for name, options in needed.items():
        if not any((llm_dir / o).is_file() for o in options):
            raise folder_error(model_dir, f"llm/{name} is missing")
    index = llm_dir / "model.safetensors.index.json"
    if index.is_file():  # every shard it names must lie inside the folder too
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise folder_error(model_dir, f"llm/model.safetensors.index.json cannot be read ({exc!r})") from None
        for shard in shards:
            inside(model_dir, f"llm/{shard}" if isinstance(shard, str) else shard, "weight shard")
    return llm_dir


def _load_config(model_dir: Path, llm_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        raw = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise folder_error(model_dir, f"llm/config.json cannot be read ({exc})") from None
    problem = llm_config_problem(raw) if isinstance(raw, dict) else "llm/config.json must hold a JSON object"
    if problem:  # before transformers builds anything from it
        raise folder_error(model_dir, problem)
    try:
        config = AutoConfig.from_pretrained(llm_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise folder_error(model_dir, f"llm/config.json cannot be read ({exc})") from None
    if config.model_type != "gemma2":
        raise folder_error(model_dir, f"llm/ holds a {config.model_type!r} model; IRG-MotionLLM is Gemma-2")
    if getattr(config, "quantization_config", None):
        raise folder_error(model_dir, "llm/ holds a quantised save; the loader quantises at load time and "
                                      "needs the full-precision weights")
    return config


def _load_tokenizer(model_dir: Path, llm_dir: Path, manifest: dict[str, Any], config: Any) -> tuple[Any, MotionVocab]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers raises its own exception types for a damaged tokenizer.json
        raise folder_error(model_dir, f"the llm/ tokenizer cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        vocab = MotionVocab.from_tokenizer(tokenizer)
    except MotionVocabError as exc:
        raise folder_error(model_dir, f"llm/ tokenizer: {exc}") from None
    expected = MotionVocab.from_manifest(manifest["motion_tokens"])
    if vocab != expected:
        raise folder_error(model_dir, f"the tokenizer puts the motion tokens at {vocab.start_id}.."
                                      f"{vocab.all_ids[-1]} but manifest.json says {expected.start_id}.."
                                      f"{expected.all_ids[-1]}: tokenizer and manifest come from different conversions")
    if len(tokenizer) > config.vocab_size:
        raise folder_error(model_dir, f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                                      f"{config.vocab_size} rows: the embedding was not resized to the vocabulary")
    first = tokenizer("x").input_ids
    if tokenizer.bos_token_id is None or not first or first[0] != tokenizer.bos_token_id:
        raise folder_error(model_dir, "the tokenizer does not add <bos> when encoding (Gemma's does, and the "
                                      "model was trained with it): set add_bos_token true in llm/tokenizer_config.json")
    return tokenizer, vocab


def eos_token_ids(generation_eos: Any, config: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a generation, once each, in this order: the generation config's eos
    (an id, a list or None), the model config's, the tokenizer's, and <end_of_turn> if known."""
    found: list[Any] = [generation_eos, config.eos_token_id, tokenizer.eos_token_id]
    if "<end_of_turn>" in tokenizer.get_vocab():
        found.append(tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    ids: list[int] = []
    for item in found:
        for i in item if isinstance(item, (list, tuple)) else [item]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _eos_ids(model_dir: Path, llm_dir: Path, config: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a generation: generation config, model config, tokenizer, <end_of_turn>."""
    from transformers import GenerationConfig

    generation_eos = None
    if (llm_dir / "generation_config.json").is_file():
        generation_eos = GenerationConfig.from_pretrained(llm_dir, local_files_only=True).eos_token_id
    ids = eos_token_ids(generation_eos, config, tokenizer)
    if not ids:
        raise folder_error(model_dir, "no end-of-sequence token is defined (generation_config.json, config.json)")
    return ids


# ---------------------------------------------------------------- loading

@contextlib.contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """Silence transformers' progress bars (load/save of small local files) for the block."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _load_kwargs(device: str, precision: str, native_bf16: bool) -> dict[str, Any]:
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if native_bf16 or precision == "bf16" else torch.float32
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False,
                              "device_map": {"": device}, "dtype": torch.float32 if precision == "fp32" else compute}
    if precision == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    elif precision == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    # Gemma-2 soft-caps attention logits: SDPA cannot, eager can, flash-attn >= 2.6 can (16-bit only).
    flash = device.startswith("cuda") and kwargs["dtype"] == torch.bfloat16 and _flash_attention_usable()
    kwargs["attn_implementation"] = "flash_attention_2" if flash else "eager"
    return kwargs


class _DropInt8CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_warning() -> None:
    """bitsandbytes logs this on every int8 matmul (thousands per trace); `why` says it once."""
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in log.filters):
        log.addFilter(_DropInt8CastWarning())


def _load_weights(model_dir: Path, llm_dir: Path, kwargs: dict[str, Any], precision: str, where: str) -> Any:
    """from_pretrained, strictly: transformers only warns about missing weights and fills them at random."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with hf_progress_bars_off():
            model, info = AutoModelForCausalLM.from_pretrained(llm_dir, output_loading_info=True, **kwargs)
    except torch.OutOfMemoryError:
        raise InsufficientMemoryError(f"{where} ran out of memory while loading the {precision} weights: "
                                      "use a smaller precision (nf4) or free memory") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise folder_error(model_dir, f"llm/ weights cannot be loaded ({exc})") from None
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        detail = "; ".join(f"{len(v)} {k.replace('_', ' ')} (first: {v[0]})" for k, v in problems.items())
        raise folder_error(model_dir, f"llm/model.safetensors does not match llm/config.json: "
                                      f"{detail or info['error_msgs'][0]}")
    return model.eval()


def _flash_attention_usable() -> bool:
    """flash-attn >= 2.6 is the first to support Gemma-2's attention soft-capping."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        major, minor = (int(x) for x in importlib.metadata.version("flash_attn").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 6)


def load_llm_parts(model_dir: str | Path) -> LoadedLLM:
    """Everything of a model folder's LLM but the weights: manifest, tokenizer, motion vocabulary and
    end-of-sequence ids, checked (ModelFolderError naming the fix). `model` is None and `device`,
    `precision` and `why` are empty: an engine that loads the weights its own way (vLLM) fills them."""
    folder = Path(model_dir).expanduser().absolute()
    manifest = read_manifest(folder)
    llm_dir = _check_llm_dir(folder)
    config = _load_config(folder, llm_dir)
    tokenizer, vocab = _load_tokenizer(folder, llm_dir, manifest, config)
    eos_ids = _eos_ids(folder, llm_dir, config, tokenizer)
    return LoadedLLM(model=None, tokenizer=tokenizer, vocab=vocab, device="", precision="", why="",
                     eos_ids=eos_ids, manifest=manifest, model_dir=folder)


def load_llm(model_dir: str | Path, device: str = "auto", precision: str = "auto") -> LoadedLLM:
    """Load the model folder's LLM and tokenizer on `device` at `precision` (see the module docstring).

    Raises ModelFolderError (folder problems, with the fix), LoaderError (device/precision)
    or InsufficientMemoryError (names the precision that would fit).
    """
    parts = load_llm_parts(model_dir)
    folder, tokenizer, llm_dir = parts.model_dir, parts.tokenizer, parts.model_dir / "llm"
    config = _load_config(folder, llm_dir)

    dev = resolve_device(device)
    free, native_bf16, where = _device_facts(dev)
    sizes = {m: estimate_weight_bytes(config, m) for m in ("fp32", "bf16", "nf4", "int8")}
    chosen, why = pick_precision(precision, dev.split(":")[0], free, sizes, native_bf16, where)
    kwargs = _load_kwargs(dev, chosen, native_bf16)
    if chosen == "int8":
        _silence_int8_cast_warning()
    model = _load_weights(folder, llm_dir, kwargs, chosen, where)
    model.generation_config.eos_token_id = parts.eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    picked = " (auto: no CUDA device)" if device == "auto" and dev == "cpu" else " (auto)" if device == "auto" else ""
    why = f"device {dev}{picked}; {why}; attention {kwargs['attn_implementation']}"
    parts.model, parts.device, parts.precision, parts.why = model, dev, chosen, why
    return parts
