"""The streaming trace parser: realistic traces on the fixture tokenizer, and a 10,000-trace fuzz."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_backend.llm import prompts as P
from model_backend.llm.trace import (Assessment, BlockEnd, MotionChunk, MotionFailure, MotionSpan, TextDecoder,
                                     TextDelta, TraceParser, split_assessment)
from model_backend.llm.vocab import MotionVocab

VOCAB = MotionVocab(start_id=1000, end_id=1001, first_id=1002, count=512)
TEXT_ID = 7  # any id that is not a motion id is text


@pytest.fixture(scope="module")
def tokenizer():
    from model_backend.convert.fixture import build_tokenizer
    return build_tokenizer()


def run(parser: TraceParser, tokens: list[tuple[int, str]], stop: str = "eos"):
    events = []
    for token_id, text in tokens:
        events += parser.feed(token_id, text)
    result = parser.finish(stop)
    return events + result.final_events, result


def read_ids(tokenizer, ids: list[int], stop: str = "eos"):
    """Feed generated ids the way the engine does: text through a TextDecoder, markers by id."""
    vocab = MotionVocab.from_tokenizer(tokenizer)
    parser, decoder, events = TraceParser(vocab), TextDecoder(tokenizer), []
    for token_id in ids:
        if token_id in vocab.all_ids:
            events += parser.feed_text(decoder.flush())
            events += parser.feed(token_id)
        else:
            events += parser.feed(token_id, decoder.push(token_id))
    events += parser.feed_text(decoder.flush())
    result = parser.finish(stop)
    return events + result.final_events, result


def trace_ids(tokenizer, rounds: list[tuple[list[int], str, str]], analysis: str, finish: bool = True) -> list[int]:
    """Ids of a written trace (what the model emits after the prompt), built piece by piece."""
    ids = P.piece_ids(tokenizer, "<think>") + P.block_ids(tokenizer, "plan", P.PLAN_ANALYZE)
    ids += P.block_ids(tokenizer, "analyze", analysis) + P.block_ids(tokenizer, "plan", P.PLAN_GENERATE)
    for n, (codes, critique, refinement) in enumerate(rounds):
        if n:
            ids += P.block_ids(tokenizer, "plan", P.PLAN_REFINE)
        ids += P.piece_ids(tokenizer, "[generate]") + P.motion_span_ids(tokenizer, codes)
        ids += P.piece_ids(tokenizer, "[/generate]") + P.piece_ids(tokenizer, "\n")
        ids += P.block_ids(tokenizer, "plan", P.PLAN_ASSESS)
        ids += P.block_ids(tokenizer, "assess", f"Assessment: {critique}\nRefinement: {refinement}")
    if finish:
        ids += P.block_ids(tokenizer, "plan", P.PLAN_FINISH) + P.piece_ids(tokenizer, "</think>")
    return ids


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def deltas(events, section):
    return "".join(e.delta for e in of(events, TextDelta) if e.section == section)


# ---------------------------------------------------------------- realistic traces

def test_one_round_satisfied_trace(tokenizer):
    codes = [5, 17, 301, 44, 44, 9]
    analysis = "The goal describes a person walking forward. Key elements: steady pace, arms swinging."
    critique = "The motion shows a steady forward walk with swinging arms."
    events, result = read_ids(tokenizer, trace_ids(tokenizer, [(codes, critique, "No refinements needed.")], analysis))
    assert [m.codes for m in result.motions] == [tuple(codes)]
    assert result.motions[0].round == 1 and result.error is None and result.warnings == []
    assert result.analysis == analysis
    assert result.assessments == [Assessment(1, critique, "No refinements needed.", True)]
    assert result.think_closed
    assert deltas(events, "analyze") == analysis
    assert deltas(events, "plan") == P.PLAN_ANALYZE + P.PLAN_GENERATE + P.PLAN_ASSESS + P.PLAN_FINISH
    assert deltas(events, "assess") == f"Assessment: {critique}\nRefinement: No refinements needed."
    assert deltas(events, "other") == ""  # only tags and the newlines between blocks
    chunks = [c for e in of(events, MotionChunk) for c in e.codes]
    assert chunks == codes
    # Order: analysis before the motion, the motion before its assessment.
    kinds = [type(e).__name__ for e in events if not isinstance(e, (TextDelta, MotionChunk))]
    assert kinds.index("MotionSpan") < kinds.index("Assessment")
    assert [e.round for e in of(events, TextDelta) if e.section == "analyze"] == [0] * len(
        [e for e in of(events, TextDelta) if e.section == "analyze"])


def test_three_round_trace(tokenizer):
    rounds = [([1, 2, 3], "The arms stay low.", "Raise the right arm higher."),
              ([4, 5, 6, 7], "The arm is raised but the walk is slow.", "Walk faster."),
              ([8, 9], "The motion matches the goal.", "No refinements needed.")]
    events, result = read_ids(tokenizer, trace_ids(tokenizer, rounds, "Walk, wave."))
    assert [(m.round, list(m.codes)) for m in result.motions] == [(1, [1, 2, 3]), (2, [4, 5, 6, 7]), (3, [8, 9])]
    assert [(a.round, a.assessment, a.refinement, a.satisfied) for a in result.assessments] == [
        (1, "The arms stay low.", "Raise the right arm higher.", False),
        (2, "The arm is raised but the walk is slow.", "Walk faster.", False),
        (3, "The motion matches the goal.", "No refinements needed.", True)]
    assert result.answer.codes == (8, 9)
    refine_plans = [b for b in result.blocks if b.section == "plan" and b.text == P.PLAN_REFINE]
    assert [b.round for b in refine_plans] == [1, 2]  # the plan after round r's assessment is in round r
    assert result.warnings == []


def test_truncated_trace(tokenizer):
    rounds = [([1, 2, 3], "The arms stay low.", "Raise the right arm."), ([4, 5, 6, 7, 8], "x", "y")]
    ids = trace_ids(tokenizer, rounds, "Walk.", finish=False)
    cut = ids.index(MotionVocab.from_tokenizer(tokenizer).id_of(6)) + 1  # inside the second motion
    events, result = read_ids(tokenizer, ids[:cut], stop="max_tokens")
    assert [m.codes for m in result.motions] == [(1, 2, 3)]
    assert result.failures == [MotionFailure(2, (4, 5, 6), "the motion was cut off (max_tokens) before </Motion>")]
    assert "round 2: not a usable motion (the motion was cut off (max_tokens) before </Motion>)" in result.warnings
    assert [c for e in of(events, MotionChunk) if e.round == 2 for c in e.codes] == [4, 5, 6]
    assert result.stop_reason == "max_tokens" and not result.think_closed
    # Cut inside the analysis: no motion, a precise error, the partial analysis kept as an unclosed block.
    ids = trace_ids(tokenizer, rounds, "Walk forward with long steps.", finish=False)
    events, result = read_ids(tokenizer, ids[:40], stop="max_tokens")
    assert result.motions == [] and result.error.startswith("the trace holds no motion: the model never opened")
    assert result.blocks[-1].section == "analyze" and not result.blocks[-1].closed
    assert "the trace ended (max_tokens) inside [analyze]" in result.warnings


def test_malformed_spans_are_failures_not_motions():
    s, e, c = VOCAB.start_id, VOCAB.end_id, VOCAB.id_of
    tokens = [(s, ""), (e, ""),                            # empty
              (s, ""), (c(3), ""), (e, ""),                # one token
              (s, ""), (c(1), ""), (TEXT_ID, "x"), (e, ""),  # text inside: abandoned, stray </Motion>
              (s, ""), (c(1), ""), (s, ""), (c(2), ""), (c(3), ""), (e, ""),  # nested: second span wins
              (c(9), "")]                                  # stray code
    events, result = run(TraceParser(VOCAB), tokens)
    assert [(m.round, m.codes) for m in result.motions] == [(5, (2, 3))]
    assert [(f.round, f.codes) for f in result.failures] == [(1, ()), (2, (3,)), (3, (1,)), (4, (1,))]
    assert "1 motion token(s) outside a <Motion> span were ignored" in result.warnings
    assert "1 </Motion> without an open span were ignored" in result.warnings
    assert deltas(events, "other") == "x"


def test_tags_split_over_tokens_and_bad_nesting():
    text = ["[pl", "an]I pl", "an[/", "plan][ana", "lyze]a [b] <c>", "[assess]oops[/plan]", "[/x]"]
    events, result = run(TraceParser(VOCAB), [(TEXT_ID, t) for t in text])
    assert [(b.section, b.text, b.closed) for b in result.blocks] == [
        ("plan", "I plan", True), ("analyze", "a [b] <c>", False), ("assess", "oops", False)]
    assert result.assessments == [Assessment(0, "oops", "", False)]
    assert deltas(events, "other") == "[/x]"
    assert "[assess] opened inside [analyze] before [/analyze]" in result.warnings
    assert "[/plan] closed [assess]" in result.warnings


def test_split_assessment():
    assert split_assessment("Assessment: Good.\nRefinement: No refinements needed.") == (
        "Good.", "No refinements needed.", True)
    assert split_assessment("Assessment: a Refinement: b") == ("a", "b", True)
    assert split_assessment("  just text ") == ("just text", "", False)


def test_text_decoder_round_trips_multibyte_text(tokenizer):
    text = "Un homme marche — vite, très vite! 🏃 [plan] naïve"
    ids = P.piece_ids(tokenizer, text)
    decoder = TextDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


# ---------------------------------------------------------------- fuzz

TAG_TEXT = ["[plan]", "[/plan]", "[analyze]", "[/analyze]", "[assess]", "[/assess]", "[generate]",
            "[/generate]", "<think>", "</think>", "Assessment: ", "\nRefinement: ", "No refinements needed.",
            "\n", " ", "[", "]", "<", ">", "/", "[/", "x", "ab c", "[pl", "an]"]
text_piece = st.one_of(st.sampled_from(TAG_TEXT), st.text(alphabet="ab[]/<>\n .:", max_size=6))
code_ids = st.integers(0, 511).map(VOCAB.id_of)


@st.composite
def token_streams(draw):
    """Grammar-ish traces: valid blocks and spans mixed with random tags, ids and text, then cut."""
    tokens: list[tuple[int, str]] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 5))
        if kind == 0:  # a block, possibly with a motion inside
            name = draw(st.sampled_from(["plan", "analyze", "assess", "generate"]))
            tokens.append((TEXT_ID, f"[{name}]"))
            if name == "generate":
                tokens += [(VOCAB.start_id, "")] + [(i, "") for i in draw(st.lists(code_ids, max_size=6))]
                tokens.append((VOCAB.end_id, ""))
            elif name == "assess" and draw(st.booleans()):  # well-formed content, split anywhere
                body = "Assessment: " + draw(text_piece) + "\nRefinement: " + draw(st.sampled_from(
                    ["No refinements needed.", "No refinements needed", "Raise the arm.", ""]))
                cuts = sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=4)))
                tokens += [(TEXT_ID, body[a:b]) for a, b in zip([0] + cuts, cuts + [len(body)])]
            else:
                tokens += [(TEXT_ID, t) for t in draw(st.lists(text_piece, max_size=4))]
            tokens.append((TEXT_ID, f"[/{name}]\n"))
        elif kind == 1:  # a bare motion span
            tokens += [(VOCAB.start_id, "")] + [(i, "") for i in draw(st.lists(code_ids, max_size=5))]
            tokens.append((VOCAB.end_id, ""))
        elif kind == 2:
            tokens.append((TEXT_ID, draw(text_piece)))
        else:  # any single token
            tokens.append(draw(st.one_of(st.tuples(st.just(TEXT_ID), text_piece),
                                         st.sampled_from([(VOCAB.start_id, ""), (VOCAB.end_id, "")]),
                                         code_ids.map(lambda i: (i, "")))))
    cut = draw(st.integers(0, len(tokens)))
    return tokens[:cut]


def reference_motions(tokens: list[tuple[int, str]]) -> list[tuple[int, tuple[int, ...]]]:
    """Motions by a regex over the id classes: a complete span is S C{2,} E with nothing between."""
    letters = "".join("S" if i == VOCAB.start_id else "E" if i == VOCAB.end_id
                      else "C" if VOCAB.is_motion(i) else "T" for i, _ in tokens)
    out = []
    for match in re.finditer(r"S(C*)E", letters):
        codes = tuple(VOCAB.code_of(tokens[k][0]) for k in range(match.start(1), match.end(1)))
        if len(codes) >= 2:
            out.append((letters[:match.start() + 1].count("S"), codes))
    return out


def char_split(tokens):
    """The same stream with every text token cut into one token per character."""
    out = []
    for token_id, text in tokens:
        if token_id == TEXT_ID and len(text) > 1:
            out += [(TEXT_ID, ch) for ch in text]
        else:
            out.append((token_id, text))
    return out


def summary(result):
    return (result.motions, result.failures, result.blocks, result.assessments, result.section_text,
            result.think_closed)


@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(token_streams(), st.sampled_from(["eos", "max_tokens", "cancelled"]))
def test_fuzz_invariants(tokens, stop):
    events, result = run(TraceParser(VOCAB), tokens, stop)
    # Every motion is exactly a complete span's codes, with the right round.
    assert [(m.round, m.codes) for m in result.motions] == reference_motions(tokens)
    assert of(events, MotionSpan) == result.motions and of(events, MotionFailure) == result.failures
    # The streamed chunks of a round are its codes; deltas concatenate to each section's text.
    for motion in result.motions:
        assert tuple(c for e in of(events, MotionChunk) if e.round == motion.round for c in e.codes) == motion.codes
    for section, text in result.section_text.items():
        assert deltas(events, section) == text
    assert all(e.delta for e in of(events, TextDelta))
    # Block ends and assessments agree; "satisfied" means exactly the sentence.
    assert of(events, BlockEnd) == result.blocks
    assert of(events, Assessment) == result.assessments
    assert len(result.assessments) <= len([b for b in result.blocks if b.section == "assess"])
    assert all(a.satisfied == (a.refinement == "No refinements needed.") for a in result.assessments)
    assert (result.error is None) == bool(result.motions)
    # How text is cut into tokens does not matter.
    _, again = run(TraceParser(VOCAB), char_split(tokens), stop)
    assert summary(again) == summary(result)


@st.composite
def valid_traces(draw):
    words = st.text(alphabet="abc xyz,.", min_size=1, max_size=12).map(str.strip).filter(bool)
    analysis = draw(words)
    rounds = [(draw(st.lists(st.integers(0, 511), min_size=2, max_size=8)), draw(words), draw(words))
              for _ in range(draw(st.integers(1, 5)))]
    text = f"<think>[plan]{P.PLAN_ANALYZE}[/plan]\n[analyze]{analysis}[/analyze]\n"
    tokens: list[tuple[int, str]] = []
    for codes, critique, refinement in rounds:
        tokens += [(TEXT_ID, text + "[generate]"), (VOCAB.start_id, "")]
        tokens += [(VOCAB.id_of(k), "") for k in codes] + [(VOCAB.end_id, "")]
        text = f"[/generate]\n[assess]Assessment: {critique}\nRefinement: {refinement}[/assess]\n"
    tokens.append((TEXT_ID, text + "</think>"))
    # Cut the text tokens at random points.
    cut_tokens = []
    for token_id, chunk in tokens:
        if token_id != TEXT_ID:
            cut_tokens.append((token_id, chunk))
            continue
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(chunk) - 1)), max_size=6)))
        cut_tokens += [(TEXT_ID, chunk[a:b]) for a, b in zip([0] + cuts, cuts + [len(chunk)]) if chunk[a:b]]
    return analysis, rounds, cut_tokens


@settings(max_examples=1_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(valid_traces())
def test_valid_traces_parse_exactly(trace):
    analysis, rounds, tokens = trace
    _, result = run(TraceParser(VOCAB), tokens)
    assert result.analysis == analysis
    assert [list(m.codes) for m in result.motions] == [codes for codes, _, _ in rounds]
    assert [(a.assessment, a.refinement) for a in result.assessments] == [(c, r) for _, c, r in rounds]
    assert result.warnings == [] and result.think_closed
