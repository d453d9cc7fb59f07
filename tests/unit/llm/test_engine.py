"""The Engine on a tiny fixture model folder: every task, event order, cancel, seeds, nf4, the KV-cache loop.

The fixture's weights are random, so it never writes a reasoning trace. Where a test
needs the model to follow the trace grammar (stop on `satisfied`, round limits, what
prompt each phase sees), `ScriptedLM` stands in for a trained model: a module that
puts the top logit on the next token of a given script. Everything else about the
engine (tokenizer, parser, constraint, codec, events) is the real code.
"""
from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model_backend.llm import prompts as P
from model_backend.llm.engine import Engine, EngineError, Sampler, stream_tokens
from model_backend.wire.protocol import decode_array

PROMPT = "a person walks forward and waves"
SECTIONS = {"analyze", "plan", "assess", "caption", "other"}
STOP_REASONS = {"eos", "satisfied", "max_tokens", "max_rounds", "cancelled"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from model_backend.convert.fixture import make_fixture
    return make_fixture(tmp_path_factory.mktemp("engine") / "model", seed=0)


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(model_dir, device="cpu", precision="fp32")


class Recorder:
    """An `emit` that keeps every event and checks the basic contract as they come."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        assert "id" not in event and event["event"]
        assert not self.events or self.events[-1]["event"] != "done", "an event came after done"
        self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def done(self) -> dict:
        assert self.events and self.events[-1]["event"] == "done"
        assert len(self.of("done")) == 1
        return self.events[-1]

    def text(self, section: str) -> str:
        return "".join(e["delta"] for e in self.of("text") if e["section"] == section)


def run(method, *args, **kwargs) -> Recorder:
    rec = Recorder()
    method(*args, emit=rec, cancel=threading.Event(), **kwargs)
    return rec


def check_events(rec: Recorder, num_joints: int = 22) -> None:
    """Order and shape rules every task's stream must follow."""
    done = rec.done
    assert done["stop_reason"] in STOP_REASONS
    assert done["motions"] == len(rec.of("motion"))
    assert isinstance(done["tokens_generated"], int) and done["elapsed_s"] >= 0
    assert all(isinstance(w, str) for w in done["warnings"])
    for e in rec.of("text"):
        assert e["section"] in SECTIONS and e["delta"] and isinstance(e["round"], int)
    rounds = [m["round"] for m in rec.of("motion")]
    assert rounds == sorted(set(rounds))
    for m in rec.of("motion"):
        n = len(m["tokens"])
        joints, contacts, features = (decode_array(m[k]) for k in ("joints", "contacts", "features"))
        assert joints.shape == (4 * n, num_joints, 3) and contacts.shape == (4 * n, 4)
        assert features.shape == (4 * n, 263) and np.isfinite(joints).all() and m["fps"] == 20.0
        if m["source"] != "decode":  # streamed tokens of a round come before its motion and add up to it
            index = rec.events.index(m)
            streamed = [t for e in rec.events[:index] if e["event"] == "motion_tokens" and e["round"] == m["round"]
                        for t in e["tokens"]]
            assert streamed[-n:] == m["tokens"]


# ---------------------------------------------------------------- the decode loop

def test_info_is_the_ready_handshake(engine, model_dir):
    info = engine.info
    assert info["model"] == {"dir": str(model_dir), "name": "tiny fixture (seed 0, untrained: its motion is noise)",
                             "stage": 2, "dataset": "HumanML3D", "fps": 20.0, "num_joints": 22,
                             "feature_size": 263, "fixture": True}
    assert info["device"]["type"] == "cpu" and info["device"]["precision"] == "fp32"
    assert "fp32" in info["device"]["why"] and info["device"]["name"]


def test_greedy_loop_equals_model_generate(engine):
    ids = P.interleaved_prompt_ids(engine.tokenizer, PROMPT)
    ours, stop = stream_tokens(engine.model, ids, max_new_tokens=20, eos_ids=engine.eos_ids)
    theirs = engine.model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                                   eos_token_id=engine.eos_ids)[0, len(ids):].tolist()
    assert stop == "max_tokens" and len(ours) == 20 and ours == theirs


def test_loop_is_exact_past_the_sliding_window(engine):
    """Gemma-2's hybrid cache: with a window of 8, a 40-token run crosses it many times."""
    from transformers import Gemma2ForCausalLM

    config = copy.deepcopy(engine.model.config)
    config.sliding_window = 8
    torch.manual_seed(3)
    model = Gemma2ForCausalLM(config).eval()
    ids = P.forced_generate_ids(engine.tokenizer, PROMPT)[:12]
    ours, _ = stream_tokens(model, ids, max_new_tokens=40, eos_ids=[])
    theirs = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(ids):].tolist()
    assert ours == theirs
    with torch.no_grad():  # and both equal recomputing the whole sequence without any cache
        full = model(torch.tensor([ids + ours]), use_cache=False).logits[0]
    assert full[len(ids) - 1:-1].argmax(-1).tolist() == ours


def test_sampler_is_reproducible_and_top_p_keeps_the_head():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])  # softmax: 0.09, 0.64, 0.24, 0.03
    a, b, c = Sampler(1.0, seed=5), Sampler(1.0, seed=5), Sampler(1.0, seed=6)
    first = [a.choose(logits) for _ in range(40)]
    assert first == [b.choose(logits) for _ in range(40)] != [c.choose(logits) for _ in range(40)]
    assert set(first) > {1}  # plain sampling reaches other tokens
    assert {Sampler(1.0, top_p=0.5, seed=1).choose(logits) for _ in range(50)} == {1}  # 0.64 >= 0.5 alone
    head = Sampler(1.0, top_p=0.8, seed=1)
    assert {head.choose(logits) for _ in range(200)} == {1, 2}  # 0.64 + 0.24 reaches 0.8
    assert Sampler(0.0).choose(logits) == 1


# ---------------------------------------------------------------- generate on the fixture

def test_direct_mode_yields_one_motion(engine):
    rec = run(engine.generate, PROMPT, mode="direct", max_motion_tokens=10)
    check_events(rec)
    (motion,) = rec.of("motion")
    assert motion["source"] == "direct" and motion["round"] == 1
    assert 2 <= len(motion["tokens"]) <= 10
    assert decode_array(motion["joints"]).shape == (4 * len(motion["tokens"]), 22, 3)
    assert rec.done["stop_reason"] == "eos" and rec.done["motions"] == 1
    assert rec.done["tokens_generated"] == len(motion["tokens"]) + 1  # the codes and </Motion>


def test_interleaved_on_the_fixture_falls_back_to_direct(engine):
    budget = len(P.interleaved_prompt_ids(engine.tokenizer, PROMPT)) + 30
    rec = run(engine.generate, PROMPT, max_new_tokens=budget, max_motion_tokens=6)
    check_events(rec)
    assert [e["event"] for e in rec.events][-2:] == ["motion", "done"]
    assert rec.of("motion")[0]["source"] == "direct"
    assert any("fell back to the direct prompt" in w for w in rec.done["warnings"])
    assert rec.done["tokens_generated"] == 30 + len(rec.of("motion")[0]["tokens"]) + 1


def test_preview_events_during_a_span(engine):
    rec = run(engine.generate, PROMPT, mode="direct", max_motion_tokens=17, preview=True)
    check_events(rec)
    n = len(rec.of("motion")[0]["tokens"])
    previews = rec.of("preview")
    assert len(previews) == n // 8
    for k, p in enumerate(previews, start=1):
        joints = decode_array(p["joints"])
        assert joints.shape == (32 * k, 22, 3) and 0 <= p["stable_frames"] <= 32 * k and p["fps"] == 20.0


def test_seed_makes_sampling_reproducible(engine):
    def tokens(seed):
        rec = run(engine.generate, PROMPT, mode="direct", max_motion_tokens=12, temperature=1.0, seed=seed)
        return rec.of("motion")[0]["tokens"]

    assert tokens(123) == tokens(123)
    assert tokens(123) != tokens(124)


def test_stage1_loop_on_the_fixture(engine):
    rec = run(engine.generate, PROMPT, mode="stage1_loop", max_rounds=2, max_new_tokens=4, max_motion_tokens=4)
    check_events(rec)
    assert [(m["round"], m["source"]) for m in rec.of("motion")] == [(1, "direct"), (2, "refine")]
    (assessment,) = rec.of("assessment")
    assert assessment["round"] == 1 and assessment["refinement"] == rec.text("assess").strip()
    assert rec.done["stop_reason"] == "max_rounds"


def test_cancel_from_another_thread_stops_at_once(engine):
    cancel, first, events = threading.Event(), threading.Event(), []

    def emit(event):
        events.append(event)
        if not first.is_set():
            first.set()
            assert cancel.wait(10)  # hold the generation until the other thread has cancelled it

    worker = threading.Thread(target=engine.generate, args=(PROMPT,), kwargs=dict(emit=emit, cancel=cancel))
    worker.start()
    assert first.wait(10)
    cancel.set()
    worker.join(10)
    assert not worker.is_alive()
    done = events[-1]
    assert done["event"] == "done" and done["stop_reason"] == "cancelled"
    assert [e["event"] for e in events[1:-1]] == []  # nothing was generated after the cancel
    assert done["tokens_generated"] <= 5

    already = threading.Event()
    already.set()
    rec = Recorder()
    engine.generate(PROMPT, mode="direct", emit=rec, cancel=already)
    assert rec.events == [rec.done] and rec.done["tokens_generated"] == 0


# ---------------------------------------------------------------- other tasks on the fixture

def test_critique_refine_caption_on_the_fixture(engine):
    codes = [5, 17, 301, 44]
    budget = len(P.injected_trace_ids(engine.tokenizer, PROMPT, "", codes)) + 20
    rec = run(engine.critique, PROMPT, codes, max_new_tokens=budget)
    check_events(rec)
    (assessment,) = rec.of("assessment")
    assert assessment["round"] == 1 and rec.text("analyze") and rec.done["motions"] == 0

    rec = run(engine.refine, PROMPT, codes, max_new_tokens=budget, max_motion_tokens=5)
    check_events(rec)
    assert [(m["round"], m["source"]) for m in rec.of("motion")] == [(2, "refine")]
    assert len(rec.of("assessment")) == 1

    rec = run(engine.refine, PROMPT, codes, instruction="Raise both arms.", form="stage1", max_motion_tokens=5)
    check_events(rec)
    assert rec.of("assessment") == [] and [m["round"] for m in rec.of("motion")] == [2]

    rec = run(engine.caption, codes, max_new_tokens=5)
    check_events(rec)
    (caption,) = rec.of("caption")
    assert caption["text"] == rec.text("caption").strip() and rec.done["tokens_generated"] == 5


def test_decode_and_encode(engine):
    rec = run(engine.decode, [3, 4, 5])
    check_events(rec)
    (motion,) = rec.of("motion")
    assert motion["source"] == "decode" and motion["tokens"] == [3, 4, 5]
    joints = decode_array(motion["joints"])
    rec = run(engine.encode, joints, 20.0)
    (encoded,) = rec.of("encoded")
    assert len(encoded["tokens"]) == 3 and all(0 <= t < 512 for t in encoded["tokens"])
    assert rec.done["stop_reason"] == "eos"
    with pytest.raises(EngineError) as err:
        run(engine.encode, joints[:, :5], 20.0)
    assert err.value.code == "bad_array"


@pytest.mark.parametrize("call", [
    lambda e, **k: e.generate(PROMPT, mode="sideways", **k),
    lambda e, **k: e.generate(PROMPT, max_motion_tokens=51, **k),
    lambda e, **k: e.generate(PROMPT, max_motion_tokens=1, **k),
    lambda e, **k: e.generate(PROMPT, temperature=-1.0, **k),
    lambda e, **k: e.generate(PROMPT, top_p=0.0, **k),
    lambda e, **k: e.generate(PROMPT, seed="7", **k),
    lambda e, **k: e.generate(PROMPT, max_new_tokens=10, **k),
    lambda e, **k: e.generate(" <Motion_4></Motion> <eos> ", **k),
    lambda e, **k: e.critique(PROMPT, [], **k),
    lambda e, **k: e.critique(PROMPT, [1, 512], **k),
    lambda e, **k: e.critique(PROMPT, [1, 2], max_new_tokens=50, **k),
    lambda e, **k: e.refine(PROMPT, [1, 2], instruction="<Motion>", **k),
    lambda e, **k: e.refine(PROMPT, [1, 2], form="stage2", **k),
    lambda e, **k: e.caption([-1], **k),
    lambda e, **k: e.decode([True], **k),
])
def test_bad_requests_fail_before_any_event(engine, call):
    rec = Recorder()
    with pytest.raises(EngineError) as err:
        call(engine, emit=rec, cancel=threading.Event())
    assert err.value.code == "bad_request" and err.value.message
    assert rec.events == []


def test_nf4_precision_generates_on_cpu(model_dir):
    nf4 = Engine(model_dir, device="cpu", precision="nf4")
    assert nf4.info["device"]["precision"] == "nf4"
    rec = run(nf4.generate, PROMPT, mode="direct", max_motion_tokens=3)
    check_events(rec)
    assert 2 <= len(rec.of("motion")[0]["tokens"]) <= 3


# ---------------------------------------------------------------- trace semantics (scripted model)

class ScriptedLM(torch.nn.Module):
    """Stands in for a trained model: each prefill starts the next script, each step emits its next token."""

    def __init__(self, scripts: list[list[int]], vocab_size: int, eos_id: int, config):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the engine a device
        self.scripts, self.vocab_size, self.eos_id = list(scripts), vocab_size, eos_id
        self.prompts: list[list[int]] = []
        self.config = config  # the real model's: context length and memory estimate

    def forward(self, input_ids, position_ids=None, cache=None, use_cache=True, logits_to_keep=1):
        if cache is None:
            self.prompts.append(input_ids[0].tolist())
            self.script, self.step = (self.scripts.pop(0) if self.scripts else []), 0
        else:
            self.step += 1
        target = self.script[self.step] if self.step < len(self.script) else self.eos_id
        logits = torch.zeros(1, 1, self.vocab_size)
        logits[0, 0, target] = 10.0
        return SimpleNamespace(logits=logits, cache="kept")


@pytest.fixture
def scripted(engine):
    def make(*scripts):
        clone = copy.copy(engine)
        clone.model = ScriptedLM(list(scripts), engine.model.config.vocab_size, engine.eos_ids[0], engine.model.config)
        clone.prefill_chunk = 1 << 20  # one forward per prompt: each prefill starts the next script
        return clone
    return make


def pieces(tok, *parts) -> list[int]:
    """Ids of a trace: strings tokenised alone, lists of codes as motion spans."""
    ids: list[int] = []
    for part in parts:
        ids += P.motion_span_ids(tok, part) if isinstance(part, list) else P.piece_ids(tok, part)
    return ids


def two_round_trace(tok, second="No refinements needed."):
    return pieces(tok, "<think>", "[plan]", P.PLAN_ANALYZE, "[/plan]", "\n", "[analyze]", "Walk; wave.", "[/analyze]",
                  "\n", "[plan]", P.PLAN_GENERATE, "[/plan]", "\n", "[generate]", [1, 2, 3], "[/generate]", "\n",
                  "[plan]", P.PLAN_ASSESS, "[/plan]", "\n", "[assess]",
                  "Assessment: The arm stays down.\nRefinement: Raise the right arm.", "[/assess]", "\n",
                  "[plan]", P.PLAN_REFINE, "[/plan]", "\n", "[generate]", [4, 5, 6, 7], "[/generate]", "\n",
                  "[plan]", P.PLAN_ASSESS, "[/plan]", "\n", "[assess]", f"Assessment: Good.\nRefinement: {second}",
                  "[/assess]", "\n", "[plan]", P.PLAN_FINISH, "[/plan]", "\n", "</think>")


def test_interleaved_trace_stops_when_satisfied(engine, scripted):
    model_engine = scripted(two_round_trace(engine.tokenizer))
    rec = run(model_engine.generate, PROMPT)
    check_events(rec)
    assert [(m["round"], m["tokens"], m["source"]) for m in rec.of("motion")] == [
        (1, [1, 2, 3], "trace"), (2, [4, 5, 6, 7], "trace")]
    assert [(a["round"], a["assessment"], a["refinement"], a["satisfied"]) for a in rec.of("assessment")] == [
        (1, "The arm stays down.", "Raise the right arm.", False), (2, "Good.", "No refinements needed.", True)]
    assert rec.text("analyze") == "Walk; wave."
    assert rec.done["stop_reason"] == "satisfied" and rec.done["warnings"] == []
    kinds = [e["event"] for e in rec.events if e["event"] in ("motion", "assessment")]
    assert kinds == ["motion", "assessment", "motion", "assessment"]
    assert model_engine.model.prompts == [P.interleaved_prompt_ids(engine.tokenizer, PROMPT)]


def test_interleaved_trace_round_limit_and_eos(engine, scripted):
    rec = run(scripted(two_round_trace(engine.tokenizer)).generate, PROMPT, max_rounds=1)
    assert [m["round"] for m in rec.of("motion")] == [1] and len(rec.of("assessment")) == 1
    assert rec.done["stop_reason"] == "max_rounds"
    rec = run(scripted(two_round_trace(engine.tokenizer, second="Walk faster.")).generate, PROMPT)
    assert rec.done["stop_reason"] == "eos" and rec.done["motions"] == 2


def test_interleaved_motion_is_capped_at_max_motion_tokens(engine, scripted):
    tok = engine.tokenizer
    trace = pieces(tok, "<think>", "[generate]", list(range(30)), "[/generate]")
    rec = run(scripted(trace).generate, PROMPT, max_motion_tokens=7, max_rounds=1)
    assert rec.of("motion")[0]["tokens"] == list(range(7))


def test_critique_injects_the_motion_after_the_models_analysis(engine, scripted):
    tok, codes = engine.tokenizer, [9, 8, 7]
    model_engine = scripted(pieces(tok, "Walk with long steps.", "[/analyze]", "\n", "[plan]"),
                            pieces(tok, "Assessment: Matches well.\nRefinement: No refinements needed.", "[/assess]"))
    rec = run(model_engine.critique, PROMPT, codes)
    check_events(rec)
    assert model_engine.model.prompts == [P.analysis_prefix_ids(tok, PROMPT),
                                          P.injected_trace_ids(tok, PROMPT, "Walk with long steps.", codes)]
    assert rec.text("analyze") == "Walk with long steps."
    assert rec.text("assess") == "Assessment: Matches well.\nRefinement: No refinements needed."
    assert [(a["round"], a["assessment"], a["satisfied"]) for a in rec.of("assessment")] == [(1, "Matches well.", True)]
    assert rec.done["stop_reason"] == "satisfied" and rec.done["warnings"] == [] and rec.done["motions"] == 0


def test_refine_with_the_models_instruction(engine, scripted):
    tok, codes = engine.tokenizer, [9, 8, 7]
    model_engine = scripted(pieces(tok, "Walk.", "[/analyze]"),
                            pieces(tok, "Assessment: Too slow.\nRefinement: Walk faster.", "[/assess]"),
                            pieces(tok, [11, 12, 13])[1:])  # the forced prompt already holds <Motion>
    rec = run(model_engine.refine, PROMPT, codes)
    check_events(rec)
    assert model_engine.model.prompts[2] == P.injected_trace_ids(tok, PROMPT, "Walk.", codes,
                                                                 assessment="Too slow.", refinement="Walk faster.")
    assert [(m["round"], m["tokens"], m["source"]) for m in rec.of("motion")] == [(2, [11, 12, 13], "refine")]
    assert rec.of("assessment")[0]["refinement"] == "Walk faster." and rec.done["stop_reason"] == "eos"


def test_refine_with_a_user_instruction_replaces_the_models(engine, scripted):
    tok, codes = engine.tokenizer, [9, 8, 7]
    model_engine = scripted(pieces(tok, "Walk.", "[/analyze]"),
                            pieces(tok, "Assessment: Too slow.\nRefinement:", " Walk faster.[/assess]"),
                            pieces(tok, [11, 12])[1:])
    rec = run(model_engine.refine, PROMPT, codes, instruction="Raise <Motion_3> both arms..")
    check_events(rec)
    assert rec.text("assess") == "Assessment: Too slow.\nRefinement: Raise both arms.."
    assert rec.of("assessment")[0]["refinement"] == "Raise both arms.."
    assert model_engine.model.prompts[2] == P.injected_trace_ids(tok, PROMPT, "Walk.", codes, assessment="Too slow.",
                                                                 refinement="Raise both arms..")
    assert "Refinement: Raise both arms.[/assess]" in tok.decode(model_engine.model.prompts[2])
    assert [m["tokens"] for m in rec.of("motion")] == [[11, 12]]


def test_stage1_loop_until_satisfied(engine, scripted):
    tok = engine.tokenizer
    model_engine = scripted(pieces(tok, [1, 2, 3])[1:], pieces(tok, "Raise the arm."), pieces(tok, [4, 5])[1:],
                            pieces(tok, "No refinements needed."))
    rec = run(model_engine.generate, PROMPT, mode="stage1_loop")
    check_events(rec)
    assert [(m["round"], m["tokens"], m["source"]) for m in rec.of("motion")] == [
        (1, [1, 2, 3], "direct"), (2, [4, 5], "refine")]
    assert [(a["round"], a["refinement"], a["satisfied"]) for a in rec.of("assessment")] == [
        (1, "Raise the arm.", False), (2, "No refinements needed.", True)]
    assert model_engine.model.prompts == [P.forced_generate_ids(tok, PROMPT), P.instruction_ids(tok, PROMPT, [1, 2, 3]),
                                          P.refine_ids(tok, PROMPT, [1, 2, 3], "Raise the arm."),
                                          P.instruction_ids(tok, PROMPT, [4, 5])]
    assert rec.done["stop_reason"] == "satisfied"


def test_refine_of_a_satisfactory_motion_makes_none(engine, scripted):
    tok = engine.tokenizer
    model_engine = scripted(pieces(tok, "Walk.", "[/analyze]"),
                            pieces(tok, "Assessment: Fine.\nRefinement: No refinements needed.", "[/assess]"))
    rec = run(model_engine.refine, PROMPT, [1, 2, 3])
    check_events(rec)
    assert rec.of("motion") == [] and rec.of("assessment")[0]["satisfied"] is True
    assert rec.done["stop_reason"] == "satisfied" and len(model_engine.model.prompts) == 2
    assert any("nothing to refine" in w for w in rec.done["warnings"])


def test_stage1_critique_asks_two_single_task_prompts(engine, scripted):
    tok, codes = engine.tokenizer, [4, 5, 6]
    model_engine = scripted(pieces(tok, "The arms are too low."), pieces(tok, "Raise the arms."))
    rec = run(model_engine.critique, PROMPT, codes, form="stage1")
    check_events(rec)
    assert model_engine.model.prompts == [P.assess_ids(tok, PROMPT, codes), P.instruction_ids(tok, PROMPT, codes)]
    assert [(a["round"], a["assessment"], a["refinement"], a["satisfied"]) for a in rec.of("assessment")] == [
        (1, "The arms are too low.", "Raise the arms.", False)]
    assert rec.text("assess") == "The arms are too low.\nRaise the arms."
    assert rec.done["stop_reason"] == "max_rounds"


# ---------------------------------------------------------------- Extend: prefix_tokens

TAIL = [5, 17, 17, 300, 42, 9, 9, 128, 77, 1]


def test_prefix_tokens_start_the_direct_motion_and_greedy_is_deterministic(engine):
    first = run(engine.generate, PROMPT, mode="direct", prefix_tokens=TAIL, max_motion_tokens=20)
    check_events(first)
    motion = first.of("motion")[0]
    assert motion["tokens"][:len(TAIL)] == TAIL and motion["prefix"] == len(TAIL)
    assert len(TAIL) + 5 <= len(motion["tokens"]) <= 20  # at least half the 10 new codes asked for
    again = run(engine.generate, PROMPT, mode="direct", prefix_tokens=TAIL, max_motion_tokens=20)
    assert again.of("motion")[0]["tokens"] == motion["tokens"]
    plain = run(engine.generate, PROMPT, mode="direct", max_motion_tokens=20)
    assert "prefix" not in plain.of("motion")[0]


def test_prefix_tokens_start_every_span_of_a_trace(engine, scripted):
    tok = engine.tokenizer
    trace = pieces(tok, "<think>", "[plan]", P.PLAN_GENERATE, "[/plan]", "\n", "[generate]", [1, 2, 3, 4, 5, 6],
                   "[/generate]", "\n", "[plan]", P.PLAN_ASSESS, "[/plan]", "\n", "[assess]",
                   "Assessment: Stiff.\nRefinement: Bend the knees.", "[/assess]", "\n", "[plan]", P.PLAN_REFINE,
                   "[/plan]", "\n", "[generate]", [7, 8, 9, 10, 11, 12], "[/generate]", "\n", "</think>")
    rec = run(scripted(trace).generate, PROMPT, prefix_tokens=[400, 401], max_motion_tokens=10)
    check_events(rec)
    # the model's own first two codes of each span are replaced by the forced ones; it carries on after them
    assert [m["tokens"] for m in rec.of("motion")] == [[400, 401, 3, 4, 5, 6], [400, 401, 9, 10, 11, 12]]
    assert [a["refinement"] for a in rec.of("assessment")] == ["Bend the knees."]


def test_an_extension_may_not_close_before_half_the_asked_length(engine, scripted):
    tok = engine.tokenizer
    closes_early = pieces(tok, "<think>", "[plan]", P.PLAN_GENERATE, "[/plan]", "\n", "[generate]", [1, 2, 3, 4],
                          "[/generate]", "\n", "</think>")  # 2 new codes after the forced 2
    rec = run(scripted(closes_early).generate, PROMPT, prefix_tokens=[400, 401], max_motion_tokens=30)
    check_events(rec)
    tokens = rec.of("motion")[0]["tokens"]
    assert tokens[:4] == [400, 401, 3, 4] and len(tokens) >= 2 + 14  # `</Motion>` masked until 14 new codes


def test_prefix_tokens_are_checked(engine):
    for bad, message in (([], "prefix_tokens must be a non-empty"), ([512], "prefix_tokens must be"),
                         (list(range(48)), "leave at least 2 new")):
        with pytest.raises(EngineError, match=message):
            run(engine.generate, PROMPT, prefix_tokens=bad)
