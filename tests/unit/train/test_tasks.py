"""Demo-model training examples: the interface doc's prompts byte for byte, and traces the
project's streaming parser reads back into the right motions and assessments."""
from __future__ import annotations

import random

import pytest

from model_backend.llm import prompts as P
from model_backend.llm.trace import TextDecoder, TraceParser
from model_backend.train import captions as C
from model_backend.train import tasks as T
from model_backend.train.lm_stage import build_demo_tokenizer
from model_backend.llm.vocab import MotionVocab

CONTENTS = ["walk", "run", "wave-left-hand", "wave-right-hand"]
STYLES = ["normal", "tired"]
SYSTEM = "You are an assistant who helps users understand or generate 3D human motion representations."


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer(CONTENTS, STYLES)


def clips(n: int = 24) -> list[T.Clip]:
    rng = random.Random(1)
    return [T.Clip(f"clip{i}", tuple(rng.randrange(512) for _ in range(rng.randint(10, 60))),
                   CONTENTS[i % len(CONTENTS)], STYLES[i % 2]) for i in range(n)]


def text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_tokenizer_has_the_real_layout(tokenizer):
    vocab = MotionVocab.from_tokenizer(tokenizer)
    assert [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id] == [0, 1, 2]
    assert vocab.start_id == len(tokenizer) - 514 and vocab.id_of(511) == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids(["<Motion>", "</Motion>", "<Motion_0>"]) == \
        [vocab.start_id, vocab.start_id + 1, vocab.start_id + 2]
    # The fixed prompt text is in the BPE: the system prompt is about one token a word.
    assert len(P.piece_ids(tokenizer, SYSTEM)) <= len(SYSTEM.split()) + 2


def test_single_task_examples_render_the_documented_prompts(tokenizer):
    codes = [5, 6, 7]
    motion = "<Motion><Motion_5><Motion_6><Motion_7></Motion>"
    direct = T.direct_example(tokenizer, "a man runs", [1, 2, 3])
    assert text(tokenizer, direct.prompt) == (
        f"<bos>{SYSTEM}\n\nUser: Generate a motion that depicts a man runs.\n\n Response:<Motion>")
    assert text(tokenizer, direct.response) == "<Motion_1><Motion_2><Motion_3></Motion><eos>"
    caption = T.caption_example(tokenizer, codes, "A man runs.")
    assert text(tokenizer, caption.prompt) == (
        f"<bos>{SYSTEM}\n\nUser: {motion}\nProvide a detailed description of the motion.\n\n Response:")
    assert text(tokenizer, caption.response) == "A man runs.<eos>"
    assess = T.assess_example(tokenizer, "a man runs", codes, C.assessment("walk", "run"))
    assert text(tokenizer, assess.prompt) == (
        f"<bos>{SYSTEM}\n\nUser: Motion: {motion}. Goal text: a man runs. "
        "Assess the alignment between the motion and the goal.\n\n Response:")
    assert text(tokenizer, assess.response) == "The person walks, but should run.<eos>"
    instruction = T.instruction_example(tokenizer, "a man runs", codes, P.SATISFIED)
    assert text(tokenizer, instruction.prompt).endswith(
        "Goal text: a man runs. Determine how to refine the generated motion for better alignment.\n\n Response:")
    refine = T.refine_example(tokenizer, "a man runs", codes, C.instruction("walk", "run"), [9, 9])
    assert text(tokenizer, refine.prompt).endswith(
        "Refine the motion according to the instruction: Make the person run instead of walking.\n\n Response:<Motion>")
    analyse = T.analyse_example(tokenizer, "a man runs", C.analysis("run", "normal"))
    assert text(tokenizer, analyse.prompt).endswith(
        "Determine the critical aspects to address prior to generating a motion that represents a man runs.\n\n Response:")
    for example in (direct, caption, assess, instruction, refine, analyse):
        assert example.labels[:len(example.prompt)] == [T.IGNORE] * len(example.prompt)  # loss on the response only
        assert example.labels[len(example.prompt):] == list(example.response)
        assert example.response[-1] == tokenizer.eos_token_id
        assert list(example.prompt[:-1] if example.prompt[-1] == MotionVocab.from_tokenizer(tokenizer).start_id
                    else example.prompt)[0] == tokenizer.bos_token_id


def parse(tokenizer, ids):
    """Feed ids to the trace parser the way the engine does (motion ids by id, text through the decoder)."""
    vocab = MotionVocab.from_tokenizer(tokenizer)
    parser, decoder = TraceParser(vocab, 2), TextDecoder(tokenizer)
    for token in ids:
        if token in vocab.all_ids:
            parser.feed_text(decoder.flush())
            parser.feed(token)
        else:
            parser.feed(token, decoder.push(token))
    parser.feed_text(decoder.flush())
    return parser.finish("eos")


def test_a_trace_with_a_wrong_first_motion_parses_into_rounds(tokenizer):
    walk, run = [3, 4, 5, 6], [10, 11, 12, 13, 14]
    example = T.trace_example(tokenizer, "someone jogs", C.analysis("run", "normal"), [
        (walk, C.assessment("walk", "run"), C.instruction("walk", "run")),
        (run, C.matched_assessment("run"), P.SATISFIED)])
    assert example.prompt == tuple(P.interleaved_prompt_ids(tokenizer, "someone jogs"))
    assert text(tokenizer, example.prompt).endswith(
        "formulate a plan before each step.\nGoal Text: someone jogs\n\n Response:")
    written = text(tokenizer, example.response)
    assert written.startswith("<think>[plan]I need to analyze the goal and identify the critical aspects to "
                              "generate the motion.[/plan]\n[analyze]The person should run.")
    assert ("[assess]Assessment: The person walks, but should run.\n"
            "Refinement: Make the person run instead of walking.[/assess]\n"
            "[plan]I need to refine the motion according to the instruction.[/plan]\n[generate]<Motion>") in written
    assert written.endswith("Refinement: No refinements needed.[/assess]\n[plan]I need to finish thinking as the "
                            "satisfactory motion is generated.[/plan]\n</think><eos>")
    result = parse(tokenizer, example.response[:-1])  # the engine stops on eos without feeding it
    assert [m.codes for m in result.motions] == [tuple(walk), tuple(run)]
    assert [(a.round, a.assessment, a.refinement, a.satisfied) for a in result.assessments] == [
        (1, "The person walks, but should run.", "Make the person run instead of walking.", False),
        (2, "The person runs, as the goal asks.", P.SATISFIED, True)]
    assert result.analysis == C.analysis("run", "normal") and result.think_closed
    assert not result.warnings and result.error is None


def test_trace_ids_match_the_engine_injection_builder(tokenizer):
    """Critique/refine write the trace with prompts.injected_trace_ids: training must give the same ids."""
    walk, run = [3, 4, 5], [10, 11, 12]
    analysis = C.analysis("run", "normal")
    critique, instruction = C.assessment("walk", "run"), C.instruction("walk", "run")
    example = T.trace_example(tokenizer, "a man runs", analysis,
                              [(walk, critique, instruction), (run, C.matched_assessment("run"), P.SATISFIED)])
    injected = P.injected_trace_ids(tokenizer, "a man runs", analysis, walk, assessment=critique,
                                    refinement=instruction)
    assert example.ids[:len(injected)] == injected
    assert example.ids[len(injected)] == MotionVocab.from_tokenizer(tokenizer).id_of(run[0])


def test_trace_must_end_satisfied_once(tokenizer):
    with pytest.raises(ValueError, match="No refinements needed"):
        T.trace_example(tokenizer, "a man runs", "x", [([1, 2], "ok", "Make it better.")])


def test_sampled_examples_cover_every_task_deterministically(tokenizer):
    examples = T.sample_examples(tokenizer, clips(), 300, seed=3)
    assert {e.task for e in examples} == set(T.TASK_WEIGHTS)
    again = T.sample_examples(tokenizer, clips(), 300, seed=3)
    assert [e.ids for e in examples] == [e.ids for e in again]
    traces = [parse(tokenizer, e.response[:-1]) for e in examples if e.task == "trace"]
    assert all(t.assessments[-1].satisfied and t.error is None for t in traces)
    rounds = [len(t.motions) for t in traces]
    assert 1 in rounds and 2 in rounds and max(rounds) <= 3  # some first motions are wrong, then refined
    for trace in traces:
        assert all(not a.satisfied for a in trace.assessments[:-1])
        assert all(2 <= len(m.codes) <= T.MAX_MOTION_TOKENS for m in trace.motions)


def test_held_out_clips_are_never_sampled(tokenizer):
    data = clips() + [T.Clip("secret", tuple([511] * 30), "walk", "normal", "test")]
    examples = T.sample_examples(tokenizer, data, 200, seed=0)
    secret = MotionVocab.from_tokenizer(tokenizer).id_of(511)
    assert not any(ids.count(secret) >= 8 for ids in (e.ids for e in examples))


def test_holds_of_one_code_are_cut_to_three_tokens():
    assert T.squeeze_holds([7, 7, 7, 7, 7, 2, 2, 3, 3, 3, 3, 7]) == [7, 7, 7, 2, 2, 3, 3, 3, 7]
    window = T.crop([5] * 80 + list(range(60)), random.Random(0))  # 63 codes once squeezed: a 49-code window
    full = [5] * 3 + list(range(60))
    assert len(window) == T.MAX_MOTION_TOKENS and any(full[i:i + 49] == window for i in range(len(full) - 48))
