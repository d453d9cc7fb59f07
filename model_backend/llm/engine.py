"""The generation engine: every IRG-MotionLLM task, streamed as protocol events.

`Engine(model_dir)` loads the LLM (`loader.load_llm`) and the motion codec
(`codec.MotionCodec`) once. Each task method takes `emit` (called with event dicts,
without the request `id`, which the server adds) and `cancel` (a `threading.Event`
checked before every token), emits events as in docs/protocol.md and ends with one
`done`, or raises `EngineError(code, message)` before emitting anything when the
request itself is bad.

Decoding is the engine's own loop over the model's forward with its KV cache (the
hybrid sliding/global cache Gemma-2 builds), one token per step: greedy by default
(the authors' setting), or temperature / top-p sampling from a seeded
`torch.Generator`, so a seed reproduces a run. `MotionConstraint` keeps every motion
span well formed (2..max_motion_tokens codes, then `</Motion>`).

Task flows:
* generate `interleaved`: one reasoning trace; stops on eos, on `satisfied`, after the
  assessment of round `max_rounds`, or at `max_new_tokens` (total incl. prompt, the
  authors' 1300). No complete motion -> the direct prompt, with a warning.
* generate `direct`: the forced single-task prompt; one motion.
* generate `stage1_loop`: direct, then up to `max_rounds - 1` times a refinement
  instruction and, unless `No refinements needed.`, an instructed refinement.
* generate with `prefix_tokens` (Extend): any mode; every motion span the model opens
  starts with those codes, forced by the constraint one token at a time (so the
  model reads them as its own), and the model continues the motion from them. The
  `motion` events then carry `prefix` (how many of their tokens were forced).
* critique / refine (`interleaved` form): the model writes its own analysis after the
  fixed opening, then the trace is written up to `[assess]` around the given motion
  (prompts.injected_trace_ids) and the model assesses it; refine then writes the
  assess block with the instruction (the model's or the user's), the refine plan and
  `[generate]<Motion>`, and the model emits the refined motion. The given motion is
  round 1, the refined one round 2. `stage1` form: the single-task prompts.

`done.stop_reason`: `eos` also ends a forced motion (its `</Motion>`), a caption, an
encode or a decode; `satisfied` when an assessment says `No refinements needed.`;
`max_rounds` when the requested rounds are done (including a critique's one
assessment); `max_tokens`; `cancelled`. An Engine serves one request at a time.
"""
from __future__ import annotations

import inspect
import math
import platform
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import prompts as P
from .constraints import MAX_MOTION_TOKENS, MotionConstraint
from ..wire.limits import DEFAULT_CONTEXT, MAX_MOTION_TOKENS_IN, MAX_PROMPT_TOKENS, LimitError, check
from ..wire.protocol import encode_array
from .trace import (Assessment, BlockEnd, MotionChunk, MotionSpan, TextDecoder, TextDelta, TraceParser, TraceResult,
                    split_assessment)
from .vocab import MotionVocab

__all__ = ["Engine", "EngineError", "Sampler", "stream_tokens", "GENERATE_MODES", "REFINE_FORMS"]

Emit = Callable[[dict[str, Any]], None]

GENERATE_MODES = ("interleaved", "direct", "stage1_loop")
REFINE_FORMS = ("interleaved", "stage1")
MIN_MOTION_TOKENS = 2      # an empty or one-token motion is a failure (interface doc 3.1)
TEXT_TOKENS = 200          # cap for free-text answers (captions, instructions, assessments)
ANALYSIS_TOKENS = 300      # cap for the model's own analysis before an injected motion
PREVIEW_EVERY = 8          # motion tokens between two previews
TRAINED_MOTION_TOKENS = 50  # longer given motions work but are outside training
MAX_ROUNDS = 20            # training traces hold at most 5 motions; more rounds are allowed, not useful
MAX_NEW_TOKENS = 1 << 16   # upper bound of a request's max_new_tokens (the model's context bounds it further)
PREFILL_CHUNK = 256        # prompt tokens per prefill step: cancel is checked between steps, and attention
                           # holds chunk x sequence scores at once instead of sequence x sequence
MEMORY_MARGIN = 1.25       # the memory estimate of a sequence, times this, must be free before its prefill
GENERIC_INSTRUCTION = "Improve the alignment between the motion and the goal text."


def _new_codes_floor(prefix: int, max_motion_tokens: int) -> int:
    """Codes a motion span must hold beyond its forced prefix before it may close.

    An extension gets at least half the room it asked for: left free, a model may close
    the span a few codes after the forced tail, a twitch instead of the asked seconds."""
    if not prefix:
        return MIN_MOTION_TOKENS
    return max(MIN_MOTION_TOKENS, (max_motion_tokens - prefix) // 2)


class EngineError(Exception):
    """A request the engine cannot serve; `code` is a protocol error code, `message` says what to do."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- sampling and the decode loop

class Sampler:
    """Greedy (temperature 0) or temperature + top-p sampling with its own seeded generator."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def choose(self, logits: torch.Tensor) -> int:
        """The next token id from one row of (already constrained) logits."""
        if self.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs[before >= self.top_p] = 0.0  # keep the smallest head whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; use whichever this model takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def stream_tokens(model: Any, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_ids: Iterable[int],
                  sampler: Sampler | None = None, processor: Callable | None = None,
                  cancel: threading.Event | None = None, on_token: Callable[[int], str | None] | None = None,
                  prefill_chunk: int = PREFILL_CHUNK,
                  pace: Callable[[], None] | None = None) -> tuple[list[int], str]:
    """Generate after `prompt_ids` one token at a time with the KV cache; return (new ids, stop reason).

    Stops with `cancelled` (checked before every prefill chunk and every step), `eos` (the
    eos id is not returned), `max_tokens`, or the reason `on_token(id)` returns.
    `processor(input_ids, scores)` constrains the logits as a transformers LogitsProcessor
    would. New tokens never run past the model's context. Before anything runs, the memory
    the whole sequence needs is compared with what is free: EngineError `too_long` when it
    does not fit ("too long for this machine" is an answer, not a kill). The prompt is
    prefilled in chunks of `prefill_chunk` tokens.
    """
    sampler = sampler or Sampler()
    eos = {int(i) for i in eos_ids}
    device = next(model.parameters()).device
    max_new_tokens = min(max_new_tokens, context_length(model) - len(prompt_ids))
    if max_new_tokens < 1:
        raise EngineError("too_long", f"the prompt takes {len(prompt_ids)} tokens, and the model attends to "
                                      f"{context_length(model)}: shorten the prompt or the motion")
    check_memory(model, len(prompt_ids) + max_new_tokens)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    step = _Stepper(model, device)
    new: list[int] = []
    with torch.inference_mode():
        for start in range(0, ids.shape[1], prefill_chunk):
            if cancel is not None and cancel.is_set():
                return new, "cancelled"
            logits = step(ids[:, start:start + prefill_chunk])
        for index in range(max_new_tokens):
            if index and pace is not None:
                pace()  # a server may hand the engine to another request between two tokens
            if index and cancel is not None and cancel.is_set():
                return new, "cancelled"
            if index:
                logits = step(ids[:, -1:])
            scores = logits.float()
            if processor is not None:
                scores = processor(ids, scores)
            token = sampler.choose(scores[0])
            if token in eos:
                return new, "eos"
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], dtype=torch.long, device=device)], dim=1)
            if on_token is not None:
                reason = on_token(token)
                if reason:
                    return new, reason
    return new, "max_tokens"


class _Stepper:
    """One forward step over new ids with the KV cache: the logits of the last position."""

    def __init__(self, model: Any, device: Any) -> None:
        self.model, self.device = model, device
        self.key = _cache_kwarg(model)
        self.cache: Any = None
        self.position = 0

    def __call__(self, step_input: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.position, self.position + step_input.shape[1], device=self.device)[None]
        out = self.model(input_ids=step_input, position_ids=positions, use_cache=True, logits_to_keep=1,
                         **{self.key: self.cache})
        self.cache = getattr(out, self.key)
        self.position += step_input.shape[1]
        return out.logits[:, -1, :]


def context_length(model: Any) -> int:
    """The positions the model attends to (config.max_position_embeddings; Gemma-2: 8192)."""
    return int(getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT)


def sequence_bytes(config: Any, positions: int, element_bytes: int = 4) -> int:
    """Memory one sequence of `positions` needs beyond the weights: the KV cache of every layer,
    plus one prefill chunk's eager-attention scores (fp32, with the softmax copy) and MLP
    activations, plus the last logits."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    chunk = min(PREFILL_CHUNK, positions)
    cache = 2 * config.num_hidden_layers * kv_heads * head_dim * positions * element_bytes
    scores = 2 * heads * chunk * positions * 4
    activations = chunk * (3 * config.intermediate_size + 8 * config.hidden_size) * 4
    return cache + scores + activations + 2 * config.vocab_size * 4


def free_bytes(device: Any) -> int:
    """Memory this process can still take on `device`: free GPU memory, or available RAM
    capped by the address-space limit (RLIMIT_AS) when one is set."""
    if str(device).startswith("cuda"):
        return int(torch.cuda.mem_get_info(device)[0])
    import resource

    import psutil

    free = psutil.virtual_memory().available
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        free = min(free, limit - psutil.Process().memory_info().vms)
    return int(free)


def check_memory(model: Any, positions: int) -> None:
    """EngineError `too_long` when a sequence of `positions` needs more memory than is free."""
    device = next(model.parameters()).device
    dtype = getattr(model, "dtype", torch.float32)
    need = int(sequence_bytes(model.config, positions, max(2, torch.finfo(dtype).bits // 8)
                              if dtype.is_floating_point else 4) * MEMORY_MARGIN)
    free = free_bytes(device)
    if need > free:
        raise EngineError("too_long", f"this request needs about {need / 1e9:.2f} GB for its {positions} positions "
                                      f"but only {free / 1e9:.2f} GB is free on this machine: shorten the prompt "
                                      "or the motion, lower max_new_tokens, or free memory")


# ---------------------------------------------------------------- one request

@dataclass
class _Request:
    """What one task call accumulates: its emit/cancel, counters and warnings."""

    emit: Emit
    cancel: threading.Event
    sampler: Sampler
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    motions: int = 0
    warnings: list[str] = field(default_factory=list)
    prefix: tuple[int, ...] = ()    # generate with prefix_tokens: forced at the start of every motion span

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def done(self, stop_reason: str) -> None:
        self.emit({"event": "done", "motions": self.motions, "stop_reason": stop_reason,
                   "tokens_generated": self.tokens, "elapsed_s": round(time.monotonic() - self.started, 3),
                   "warnings": list(self.warnings)})


@dataclass
class _TracePolicy:
    """When a trace-form generation stops, and how its events are labelled."""

    max_motions: int = 0            # new motions allowed (0: none; the constraint keeps <Motion> closed)
    stop_on_motion: bool = False      # forced prompts: the answer is the first motion
    stop_on_assessment: bool = False
    stop_on_block: str | None = None  # stop when this block ends (the analysis phase)
    stop_on_refinement_line: bool = False  # stop once the assess block reaches "Refinement:"
    source: str = "trace"
    round_offset: int = 0
    preview: bool = False


@dataclass
class _TraceOutcome:
    result: TraceResult
    stop_reason: str
    motions: list[MotionSpan]
    assessments: list[Assessment]
    open_text: str                  # text of the block left open at the end (e.g. a cut-off assessment)


# ---------------------------------------------------------------- the engine

class Engine:
    """A loaded IRG-MotionLLM model folder and every task on it (see the module docstring)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "auto"):
        from ..vq.codec import MotionCodec
        self.model_dir = Path(model_dir).expanduser().absolute()
        self.pace: Callable[[], None] | None = None  # called between tokens (a server's turn-taking)
        self.llm = self._load(self.model_dir, device, precision)
        codec_device = self.llm.device if str(self.llm.device).startswith("cuda") else "cpu"
        self.codec = MotionCodec.from_dir(self.model_dir, device=codec_device)
        self.model = self.llm.model
        self.tokenizer = self.llm.tokenizer
        self.vocab: MotionVocab = self.llm.vocab
        self.manifest = self.llm.manifest
        self.eos_ids = list(self.llm.eos_ids)
        self.prefill_chunk = PREFILL_CHUNK

    def _load(self, model_dir: Path, device: str, precision: str) -> Any:
        """The LLM and its tokenizer (`loader.LoadedLLM`); an engine on another runtime loads its own."""
        from .loader import load_llm

        return load_llm(model_dir, device, precision)

    def _stream(self, req: "_Request", ids: list[int], budget: int, constraint: MotionConstraint,
                on_token: Callable[[int], str | None], max_spans: int) -> tuple[list[int], str]:
        """Generate after `ids` under `constraint`, one token at a time: (new ids, stop reason).

        `max_spans`: how many motion spans may close before `<Motion>` is masked. Here the
        caller applies it between tokens through `constraint.allow_open`; an engine that
        samples out of process (vLLM) applies it itself.
        """
        return stream_tokens(self.model, ids, max_new_tokens=budget, eos_ids=self.eos_ids, sampler=req.sampler,
                             processor=constraint, cancel=req.cancel, on_token=on_token,
                             prefill_chunk=self.prefill_chunk, pace=self.pace)

    # ------------------------------------------------------------ facts

    @property
    def info(self) -> dict[str, Any]:
        """The `model` and `device` parts of the `ready` handshake."""
        m = self.manifest
        device = str(self.llm.device)
        if device.startswith("cuda"):
            name = torch.cuda.get_device_name(device)
        else:
            name = platform.processor() or platform.machine() or "cpu"
        return {
            "model": {"dir": str(self.model_dir), "name": m.get("name", self.model_dir.name),
                      "stage": m.get("stage"), "dataset": m.get("dataset"), "fps": float(m.get("fps", self.codec.fps)),
                      "num_joints": m.get("num_joints"), "feature_size": m.get("feature_size"),
                      "fixture": bool(m.get("fixture", False))},
            "device": {"type": device.split(":")[0], "name": name, "precision": self.llm.precision,
                       "why": self.llm.why},
        }

    @property
    def context_length(self) -> int:
        """The positions the model attends to: a request's max_new_tokens may not exceed it."""
        return context_length(self.model)

    def check_request(self, args: dict[str, Any]) -> None:
        """Refuse (EngineError `bad_request`) a request whose text is longer than MAX_PROMPT_TOKENS
        tokens after sanitising; cheap, so the server calls it before queueing."""
        for name in ("prompt", "instruction"):
            text = args.get(name)
            if isinstance(text, str):
                count = len(P.piece_ids(self.tokenizer, P.sanitize_user_text(text, self.tokenizer)))
                try:
                    check(f'"{name}"', count, MAX_PROMPT_TOKENS, "MAX_PROMPT_TOKENS", " tokens")
                except LimitError as exc:
                    raise EngineError("bad_request", str(exc)) from None

    @property
    def stage(self) -> int:
        return int(self.manifest.get("stage", 2))

    # ------------------------------------------------------------ public tasks

    def generate(self, prompt: str, mode: str = "interleaved", max_rounds: int = 5, max_new_tokens: int = 1300,
                 max_motion_tokens: int = 49, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, preview: bool = False, prefix_tokens: Sequence[int] | None = None, *,
                 emit: Emit, cancel: threading.Event) -> None:
        """Text -> motion(s): `interleaved` reasoning trace, `direct` forced prompt, or `stage1_loop`.

        prefix_tokens: codebook indices every motion span starts with (Extend: the encoded
        tail of the motion to continue); max_motion_tokens counts them."""
        _check_choice("mode", mode, GENERATE_MODES)
        _check_int("max_rounds", max_rounds, 1, MAX_ROUNDS)
        _check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_int("max_motion_tokens", max_motion_tokens, MIN_MOTION_TOKENS, MAX_MOTION_TOKENS)
        prefix = tuple(self._prefix(prefix_tokens, max_motion_tokens))
        req = self._request(emit, cancel, temperature, top_p, seed)
        self._note_vocabulary(req, prompt)
        req.prefix = prefix
        if mode == "interleaved":
            ids = self._ids(P.interleaved_prompt_ids, prompt)
            budget = self._budget(max_new_tokens, len(ids))
            if self.stage == 1:
                req.warn("this is a stage-1 model, which was not trained on reasoning traces: "
                         "mode 'direct' or 'stage1_loop' suits it better")
            self._interleaved(req, prompt, ids, budget, max_rounds, max_motion_tokens, preview)
        elif mode == "direct":
            ids = self._ids(P.forced_generate_ids, prompt)
            req.done(self._forced_motion(req, ids, max_motion_tokens, round_=1, source="direct", preview=preview)[0])
        else:
            ids = self._ids(P.forced_generate_ids, prompt)
            self._stage1_loop(req, prompt, ids, max_rounds, max_new_tokens, max_motion_tokens, preview)

    def critique(self, prompt: str, tokens: Sequence[int], form: str | None = None, max_new_tokens: int = 1300,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, *, emit: Emit,
                 cancel: threading.Event) -> None:
        """Assess a given motion against a prompt: `text` deltas, one `assessment`, `done`."""
        form = self._form(form)
        codes = self._codes(tokens)
        _check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        req = self._request(emit, cancel, temperature, top_p, seed)
        self._note_vocabulary(req, prompt)
        self._warn_long(req, codes)
        if form == "interleaved":  # the trace around the motion must fit, or fail before emitting anything
            self._budget(max_new_tokens, len(self._ids(P.injected_trace_ids, prompt, "", codes)))
        if form == "stage1":
            ids_a = self._ids(P.assess_ids, prompt, codes)
            ids_i = self._ids(P.instruction_ids, prompt, codes)
            critique, stop = self._free_text(req, ids_a, "assess", 1, min(max_new_tokens, TEXT_TOKENS))
            if stop == "cancelled":
                return req.done(stop)
            req.emit({"event": "text", "section": "assess", "delta": "\n", "round": 1})  # between the two answers
            refinement, stop = self._free_text(req, ids_i, "assess", 1, min(max_new_tokens, TEXT_TOKENS))
            if stop == "cancelled":
                return req.done(stop)
            item = self._emit_assessment(req, 1, critique.strip(), refinement.strip())
            return req.done("satisfied" if item.satisfied else "max_rounds")
        analysis, stop = self._analysis(req, prompt, codes, max_new_tokens)
        if stop == "cancelled":
            return req.done(stop)
        ids = self._ids(P.injected_trace_ids, prompt, analysis, codes)
        item, stop = self._assess_injected(req, prompt, ids, max_new_tokens)
        req.done(stop)

    def refine(self, prompt: str, tokens: Sequence[int], instruction: str | None = None, form: str = "interleaved",
               max_new_tokens: int = 1300, max_motion_tokens: int = 49, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, preview: bool = False, *, emit: Emit,
               cancel: threading.Event) -> None:
        """Refine a given motion (the model's own instruction, or `instruction`): the new motion is round 2."""
        form = self._form(form)
        codes = self._codes(tokens)
        _check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_int("max_motion_tokens", max_motion_tokens, MIN_MOTION_TOKENS, MAX_MOTION_TOKENS)
        if instruction is not None:
            instruction = P.sanitize_user_text(_text_arg("instruction", instruction), self.tokenizer)
            if not instruction:
                raise EngineError("bad_request", "the instruction is empty: say how the motion should change, "
                                                 "or send null to let the model decide")
        req = self._request(emit, cancel, temperature, top_p, seed)
        self._note_vocabulary(req, prompt)
        self._warn_long(req, codes)
        if form == "stage1":
            self._ids(P.forced_generate_ids, prompt)  # a bad prompt fails before any event
            return self._refine_stage1(req, prompt, codes, instruction, max_new_tokens, max_motion_tokens, preview)
        self._budget(max_new_tokens, len(self._ids(P.injected_trace_ids, prompt, "", codes)))
        analysis, stop = self._analysis(req, prompt, codes, max_new_tokens)
        if stop == "cancelled":
            return req.done(stop)
        ids = self._ids(P.injected_trace_ids, prompt, analysis, codes)
        item, stop = self._assess_injected(req, prompt, ids, max_new_tokens, instruction=instruction)
        if stop == "cancelled":
            return req.done(stop)
        if instruction is None:
            if item.satisfied:
                req.warn("the model found the motion satisfactory (No refinements needed.): nothing to refine")
                return req.done("satisfied")
            instruction = self._model_instruction(req, item)
        ids = self._ids(P.injected_trace_ids, prompt, analysis, codes, assessment=item.assessment,
                        refinement=instruction)
        req.done(self._forced_motion(req, ids, max_motion_tokens, round_=2, source="refine", preview=preview)[0])

    def caption(self, tokens: Sequence[int], max_new_tokens: int = TEXT_TOKENS, temperature: float = 0.0,
                top_p: float = 1.0, seed: int | None = None, *, emit: Emit, cancel: threading.Event) -> None:
        """Describe a motion in words: `text` deltas (section `caption`), one `caption`, `done`."""
        codes = self._codes(tokens)
        _check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        ids = self._ids(P.caption_ids, codes)
        req = self._request(emit, cancel, temperature, top_p, seed)
        self._warn_long(req, codes)
        text, stop = self._free_text(req, ids, "caption", 0, min(max_new_tokens, TEXT_TOKENS))
        if stop != "cancelled":
            req.emit({"event": "caption", "text": text.strip()})
        req.done(stop)

    def encode_tokens(self, joints_blender: np.ndarray, fps: float) -> list[int]:
        """Joints (T, J, 3; metres, Blender axes) at `fps` -> codebook indices (EngineError on bad input)."""
        try:
            return self.codec.encode_joints(np.asarray(joints_blender, dtype=np.float32), float(fps))
        except (ValueError, TypeError) as exc:
            raise EngineError("bad_array", f"cannot encode these joints: {exc}") from None

    def encode(self, joints_blender: np.ndarray, fps: float, *, emit: Emit, cancel: threading.Event) -> None:
        """Joints -> motion tokens: one `encoded`, `done`."""
        req = _Request(emit, cancel, Sampler())
        tokens = self.encode_tokens(joints_blender, fps)
        emit({"event": "encoded", "tokens": tokens})
        req.done("eos")

    def decode(self, tokens: Sequence[int], *, emit: Emit, cancel: threading.Event) -> None:
        """Motion tokens -> one `motion` (source `decode`), `done`."""
        codes = self._codes(tokens)
        req = _Request(emit, cancel, Sampler())
        self._emit_motion(req, 1, codes, "decode")
        req.done("eos")

    # ------------------------------------------------------------ flows

    def _interleaved(self, req: _Request, prompt: str, ids: list[int], budget: int, max_rounds: int,
                     max_motion_tokens: int, preview: bool) -> None:
        policy = _TracePolicy(max_motions=max_rounds, preview=preview)
        outcome = self._trace(req, ids, len(ids), budget, policy, max_motion_tokens)
        if outcome.stop_reason == "cancelled" or outcome.motions:
            return req.done(outcome.stop_reason)
        req.warn(f"{outcome.result.error}; fell back to the direct prompt")
        fallback = self._ids(P.forced_generate_ids, prompt)
        req.done(self._forced_motion(req, fallback, max_motion_tokens, round_=1, source="direct", preview=preview)[0])

    def _stage1_loop(self, req: _Request, prompt: str, ids: list[int], max_rounds: int, max_new_tokens: int,
                     max_motion_tokens: int, preview: bool) -> None:
        stop, codes = self._forced_motion(req, ids, max_motion_tokens, round_=1, source="direct", preview=preview)
        for round_ in range(2, max_rounds + 1):
            if stop == "cancelled":
                return req.done(stop)
            text, stop = self._free_text(req, self._ids(P.instruction_ids, prompt, codes), "assess", round_ - 1,
                                         min(max_new_tokens, TEXT_TOKENS))
            if stop == "cancelled":
                return req.done(stop)
            item = self._emit_assessment(req, round_ - 1, "", text.strip())
            if item.satisfied:
                return req.done("satisfied")
            instruction = self._model_instruction(req, item)
            stop, codes = self._forced_motion(req, self._ids(P.refine_ids, prompt, codes, instruction),
                                              max_motion_tokens, round_=round_, source="refine", preview=preview)
        req.done("cancelled" if stop == "cancelled" else "max_rounds")

    def _refine_stage1(self, req: _Request, prompt: str, codes: list[int], instruction: str | None,
                       max_new_tokens: int, max_motion_tokens: int, preview: bool) -> None:
        if instruction is None:
            text, stop = self._free_text(req, self._ids(P.instruction_ids, prompt, codes), "assess", 1,
                                         min(max_new_tokens, TEXT_TOKENS))
            if stop == "cancelled":
                return req.done(stop)
            item = self._emit_assessment(req, 1, "", text.strip())
            if item.satisfied:
                req.warn("the model found the motion satisfactory (No refinements needed.): nothing to refine")
                return req.done("satisfied")
            instruction = self._model_instruction(req, item)
        ids = self._ids(P.refine_ids, prompt, codes, instruction)
        req.done(self._forced_motion(req, ids, max_motion_tokens, round_=2, source="refine", preview=preview)[0])

    def _analysis(self, req: _Request, prompt: str, codes: list[int], max_new_tokens: int) -> tuple[str, str]:
        """The model's own analysis after the fixed opening of a trace (streamed as `analyze` text).

        It may take half of what the trace around the motion leaves of `max_new_tokens`
        (at most ANALYSIS_TOKENS), so the assessment always keeps room.
        """
        ids = self._ids(P.analysis_prefix_ids, prompt)
        prompt_len = len(self._ids(P.interleaved_prompt_ids, prompt))
        spare = max_new_tokens - len(self._ids(P.injected_trace_ids, prompt, "", codes))
        budget = min(max(0, spare // 2), ANALYSIS_TOKENS)
        policy = _TracePolicy(stop_on_block="analyze")
        outcome = self._trace(req, ids, prompt_len, budget, policy, MAX_MOTION_TOKENS)
        analysis = outcome.result.analysis
        if analysis is None or outcome.stop_reason != "block":
            req.warn(f"the model's analysis did not end with [/analyze] ({outcome.stop_reason}); "
                     "its text so far was used")
        return (analysis or "").strip(), outcome.stop_reason

    def _assess_injected(self, req: _Request, prompt: str, ids: list[int], max_new_tokens: int,
                         instruction: str | None = None) -> tuple[Assessment, str]:
        """Let the model assess the injected motion (round 1); return it and the `done` stop reason.

        With a user `instruction` the model writes only the assessment, up to `Refinement:`,
        and the instruction takes the refinement's place. An assessment that never closes
        (an untrained or cut-off model) is split from its text so far, with a warning.
        """
        prompt_len = len(self._ids(P.interleaved_prompt_ids, prompt))
        budget = min(max(0, max_new_tokens - len(ids)), TEXT_TOKENS)
        policy = _TracePolicy(stop_on_assessment=True, stop_on_refinement_line=instruction is not None)
        outcome = self._trace(req, ids, prompt_len, budget, policy, MAX_MOTION_TOKENS, quiet_assessment=True)
        if outcome.stop_reason == "cancelled":
            return Assessment(1, "", "", False), "cancelled"
        if outcome.assessments:
            assessment, refinement = outcome.assessments[0].assessment, outcome.assessments[0].refinement
        else:
            assessment, refinement, _found = split_assessment(outcome.open_text)
            if outcome.stop_reason != "refinement":
                req.warn(f"the assessment did not end with [/assess] ({outcome.stop_reason}); "
                         "its text so far was used")
        if instruction is not None:
            if outcome.stop_reason == "refinement":  # show the instruction where the model would have written
                req.emit({"event": "text", "section": "assess", "delta": " " + instruction, "round": 1})
            refinement = instruction
        item = self._emit_assessment(req, 1, assessment, refinement)
        if outcome.stop_reason in ("eos", "max_tokens") and not outcome.assessments:
            return item, outcome.stop_reason
        return item, "satisfied" if item.satisfied else "max_rounds"

    def _model_instruction(self, req: _Request, item: Assessment) -> str:
        """The model's refinement as an instruction; a generic one (with a warning) when it wrote none."""
        instruction = P.sanitize_user_text(item.refinement, self.tokenizer)
        if not instruction:
            req.warn(f"round {item.round}: the model wrote no refinement instruction; refined with a generic one")
            instruction = GENERIC_INSTRUCTION
        return instruction

    # ------------------------------------------------------------ building blocks

    def _trace(self, req: _Request, ids: list[int], trace_start: int, budget: int, policy: _TracePolicy,
               max_motion_tokens: int, quiet_assessment: bool = False) -> _TraceOutcome:
        """Run the model on a trace-form prompt; emit text/motion/assessment events as they come."""
        parser, decoder = TraceParser(self.vocab, MIN_MOTION_TOKENS), TextDecoder(self.tokenizer)
        for token in ids[trace_start:]:  # the written part of the trace sets the parser's state; no events
            self._feed(parser, decoder, token)
        prefix = req.prefix if policy.max_motions > 0 else ()
        constraint = MotionConstraint(self.vocab, max_motion_tokens=max_motion_tokens,
                                      min_motion_tokens=_new_codes_floor(len(prefix), max_motion_tokens),
                                      allow_open=policy.max_motions > 0, prefix=prefix)
        motions: list[MotionSpan] = []
        assessments: list[Assessment] = []

        def handle(events: list[Any]) -> str | None:
            stop = None
            for event in events:
                if isinstance(event, TextDelta):
                    req.emit({"event": "text", "section": event.section, "delta": event.delta,
                              "round": event.round + policy.round_offset})
                elif isinstance(event, MotionChunk):
                    self._emit_chunk(req, event.round + policy.round_offset, event.codes, parser, policy.preview)
                elif isinstance(event, MotionSpan):
                    motions.append(event)
                    self._emit_motion(req, event.round + policy.round_offset, list(event.codes), policy.source)
                    if len(motions) >= policy.max_motions:
                        constraint.allow_open = False
                    if policy.stop_on_motion:
                        stop = stop or "motion"
                elif isinstance(event, Assessment):
                    assessments.append(event)
                    if not quiet_assessment:
                        self._emit_assessment(req, event.round + policy.round_offset, event.assessment,
                                              event.refinement)
                    if policy.stop_on_assessment:
                        stop = stop or "assessment"
                    elif event.satisfied:
                        stop = stop or "satisfied"
                    elif policy.max_motions and len(motions) >= policy.max_motions:
                        stop = stop or "max_rounds"
                elif isinstance(event, BlockEnd) and event.section == policy.stop_on_block:
                    stop = stop or "block"
            if (policy.stop_on_refinement_line and parser.section == "assess"
                    and "Refinement:" in parser.block_text):
                stop = stop or "refinement"
            return stop

        def on_token(token: int) -> str | None:
            req.tokens += 1
            return handle(self._feed(parser, decoder, token))

        _new, stop = self._stream(req, ids, budget, constraint, on_token, policy.max_motions)
        handle(parser.feed_text(decoder.flush()))
        open_text = parser.block_text if parser.section == "assess" else ""
        result = parser.finish(stop)
        for warning in result.warnings:
            if "not a usable motion" in warning or "outside a <Motion>" in warning:
                req.warn(warning)
        return _TraceOutcome(result, stop, motions, assessments, open_text)

    def _forced_motion(self, req: _Request, ids: list[int], max_motion_tokens: int, round_: int, source: str,
                       preview: bool) -> tuple[str, list[int]]:
        """A prompt ending in `<Motion>`: emit its motion as round `round_`; return (stop reason, codes).

        The constraint makes the span close within max_motion_tokens + 1 tokens; if no
        usable motion came anyway, retry once by sampling with a fresh seed, then fail.
        """
        policy = _TracePolicy(max_motions=1, stop_on_motion=True, source=source, round_offset=round_ - 1,
                              preview=preview)
        for attempt in range(2):
            outcome = self._trace(req, ids, len(ids) - 1, max_motion_tokens + 1, policy, max_motion_tokens)
            if outcome.stop_reason == "cancelled":
                return "cancelled", []
            if outcome.motions:
                return "eos", list(outcome.motions[-1].codes)
            if attempt == 0:
                req.warn(f"round {round_}: {outcome.result.error}; retried with sampling")
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=req.sampler.generator))
                req.sampler = Sampler(temperature=max(req.sampler.temperature, 0.8), top_p=0.95, seed=seed)
        raise EngineError("no_motion", f"the model produced no usable motion for round {round_} "
                                       f"({outcome.result.error}); try another prompt or a seed")

    def _free_text(self, req: _Request, ids: list[int], section: str, round_: int,
                   budget: int) -> tuple[str, str]:
        """A free-text answer (motion tokens masked), streamed as `text` events of `section`."""
        decoder = TextDecoder(self.tokenizer)
        constraint = MotionConstraint(self.vocab, text_only=True)
        parts: list[str] = []

        def on_token(token: int) -> None:
            req.tokens += 1
            self._text_event(req, section, decoder.push(token), round_, parts)

        _new, stop = self._stream(req, ids, budget, constraint, on_token, 0)
        self._text_event(req, section, decoder.flush(), round_, parts)
        return "".join(parts), stop

    @staticmethod
    def _text_event(req: _Request, section: str, delta: str, round_: int, parts: list[str]) -> None:
        if delta:
            parts.append(delta)
            req.emit({"event": "text", "section": section, "delta": delta, "round": round_})

    def _feed(self, parser: TraceParser, decoder: TextDecoder, token: int) -> list[Any]:
        if token in self.vocab.all_ids:
            return parser.feed_text(decoder.flush()) + parser.feed(token)
        return parser.feed(token, decoder.push(token))

    def _emit_chunk(self, req: _Request, round_: int, codes: tuple[int, ...], parser: TraceParser,
                    preview: bool) -> None:
        req.emit({"event": "motion_tokens", "round": round_, "tokens": list(codes)})
        span = parser.span or []
        if preview and len(span) >= MIN_MOTION_TOKENS and len(span) % PREVIEW_EVERY == 0:
            motion, stable = self.codec.decode_partial(span)
            req.emit({"event": "preview", "round": round_, "joints": encode_array(motion.joints_blender),
                      "fps": float(motion.fps), "stable_frames": int(stable)})

    def _emit_motion(self, req: _Request, round_: int, codes: list[int], source: str) -> None:
        motion = self.codec.decode(codes)
        req.motions += 1
        event = {"event": "motion", "round": round_, "tokens": [int(k) for k in codes], "fps": float(motion.fps),
                 "joints": encode_array(motion.joints_blender), "contacts": encode_array(motion.contacts),
                 "features": encode_array(motion.features), "source": source}
        if req.prefix and list(codes[:len(req.prefix)]) == list(req.prefix):
            event["prefix"] = len(req.prefix)
        req.emit(event)

    def _emit_assessment(self, req: _Request, round_: int, assessment: str, refinement: str) -> Assessment:
        item = Assessment(round_, assessment, refinement, refinement == P.SATISFIED)
        req.emit({"event": "assessment", "round": round_, "assessment": assessment, "refinement": refinement,
                  "satisfied": item.satisfied})
        return item

    # ------------------------------------------------------------ validation

    def _request(self, emit: Emit, cancel: threading.Event, temperature: float, top_p: float,
                 seed: int | None) -> _Request:
        if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
            raise EngineError("bad_request", f"temperature must be a number >= 0 (0 = greedy), not {temperature!r}")
        if not _is_number(top_p) or not 0 < top_p <= 1:
            raise EngineError("bad_request", f"top_p must be in (0, 1], not {top_p!r}")
        if seed is not None and not _is_int(seed):
            raise EngineError("bad_request", f"seed must be an integer or null, not {seed!r}")
        return _Request(emit, cancel, Sampler(temperature, top_p, seed))

    def _ids(self, builder: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a prompt builder; a bad prompt is a `bad_request` naming the problem."""
        try:
            return builder(self.tokenizer, *args, **kwargs)
        except P.PromptError as exc:
            raise EngineError("bad_request", str(exc)) from None

    def _budget(self, max_new_tokens: int, prompt_len: int) -> int:
        """New tokens left when `max_new_tokens` caps the whole sequence (the authors' 1300 rule).

        Raises `bad_request` when nothing is left: call it before the first event.
        """
        if prompt_len >= max_new_tokens:
            raise EngineError("bad_request", f"the prompt (with any trace written for it) takes {prompt_len} tokens but max_new_tokens "
                                             f"({max_new_tokens}) caps prompt + trace: raise max_new_tokens "
                                             "or shorten the prompt")
        return max_new_tokens - prompt_len

    def _form(self, form: str | None) -> str:
        if form is None:
            return "stage1" if self.stage == 1 else "interleaved"
        _check_choice("form", form, REFINE_FORMS)
        return form

    def _prefix(self, tokens: Sequence[int] | None, max_motion_tokens: int) -> list[int]:
        """Checked prefix_tokens ([] for none): codebook indices leaving room for MIN_MOTION_TOKENS new ones."""
        if tokens is None:
            return []
        codes = self._codes(tokens, "prefix_tokens")
        if len(codes) + MIN_MOTION_TOKENS > max_motion_tokens:
            raise EngineError("bad_request", f"prefix_tokens holds {len(codes)} tokens but max_motion_tokens "
                                             f"({max_motion_tokens}) counts them too and must leave at least "
                                             f"{MIN_MOTION_TOKENS} new ones: raise max_motion_tokens (at most "
                                             f"{MAX_MOTION_TOKENS}) or send a shorter prefix")
        return codes

    def _codes(self, tokens: Sequence[int], name: str = "tokens") -> list[int]:
        try:
            codes = list(np.asarray(tokens).ravel()) if isinstance(tokens, np.ndarray) else list(tokens)
        except TypeError:
            codes = []
        if len(codes) > MAX_MOTION_TOKENS_IN:
            raise EngineError("bad_request", f"the motion has {len(codes)} tokens, more than the bound "
                                             f"MAX_MOTION_TOKENS_IN = {MAX_MOTION_TOKENS_IN} (docs/protocol.md#bounds)")
        if not codes or not all(_is_int(k) and 0 <= int(k) < self.vocab.count for k in codes):
            raise EngineError("bad_request", f"{name} must be a non-empty list of codebook indices "
                                             f"0..{self.vocab.count - 1}")
        return [int(k) for k in codes]

    def _note_vocabulary(self, req: _Request, prompt: str) -> None:
        """A model trained on a few motions (a manifest `vocabulary`, e.g. the demo model) warns when
        the prompt names none of them: the motion will show the nearest one it knows."""
        known = (self.manifest.get("vocabulary") or {}).get("labels")
        if not isinstance(known, dict) or not known:
            return
        words = set(re.findall(r"[a-z]+", str(prompt).lower()))
        if any(words & set(names) for names in known.values()):
            return
        req.warn(f"this model ({self.manifest.get('name', self.model_dir.name)}) knows only these motions: "
                 f"{', '.join(known)}; the prompt names none of them, so expect the nearest one it knows")

    @staticmethod
    def _warn_long(req: _Request, codes: list[int]) -> None:
        if len(codes) > TRAINED_MOTION_TOKENS:
            req.warn(f"the motion has {len(codes)} tokens ({len(codes) * 0.2:.1f} s); the model was trained "
                     f"on at most {TRAINED_MOTION_TOKENS} (10 s), so its judgement may be less reliable")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= int(value) <= high:
        raise EngineError("bad_request", f"{name} must be an integer in {low}..{high}, not {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise EngineError("bad_request", f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _text_arg(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EngineError("bad_request", f"{name} must be text, not {type(value).__name__}")
    return value
