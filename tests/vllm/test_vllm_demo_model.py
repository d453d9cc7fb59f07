"""The vLLM engine on the shipped demo model, which writes real reasoning traces (the fixture's
random weights never do): greedy, vLLM and the transformers engine give the same events, an
assessment included, for held-out wordings. Run with `make test-vllm`; skips without the demo
model or vLLM."""
from __future__ import annotations

import json
import threading
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm` (it uses .venv-vllm)")

from model_backend.llm.engine import Engine  # noqa: E402
from model_backend.llm.vllm_engine import VllmEngine  # noqa: E402

HEAVY = ("elapsed_s", "joints", "contacts", "features")


@pytest.fixture(scope="module")
def engines(demo_model):
    vllm_engine = VllmEngine(demo_model, "cpu", "fp32")
    yield Engine(demo_model, "cpu", "fp32"), vllm_engine
    vllm_engine.close()


def events_of(engine: Any, prompt: str, mode: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    engine.generate(prompt, mode=mode, seed=0, emit=events.append, cancel=threading.Event())
    return [{k: v for k, v in e.items() if k not in HEAVY} for e in events]


@pytest.mark.parametrize("label", ["run", "wave-right-hand", "walk-turn-left"])
def test_greedy_traces_of_the_demo_model_are_the_same_on_both_engines(engines, demo_model, label):
    prompt = json.loads((demo_model / "heldout_prompts.json").read_text())[label][0]
    transformers_events, vllm_events = (events_of(engine, prompt, "interleaved") for engine in engines)
    assert vllm_events == transformers_events
    kinds = [e["event"] for e in vllm_events]
    assert "assessment" in kinds and "motion" in kinds and kinds[-1] == "done", kinds
