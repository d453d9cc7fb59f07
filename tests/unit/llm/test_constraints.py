"""MotionConstraint: which tokens may follow, inside and outside motion spans."""
from __future__ import annotations

import pytest
import torch

from model_backend.llm.constraints import MotionConstraint
from model_backend.llm.vocab import MotionVocab

V = MotionVocab(start_id=100, end_id=101, first_id=102, count=512)
SIZE = 640  # logits wider than the vocabulary, as padded embeddings are
EOS, TEXT = 1, 50


def allowed(constraint: MotionConstraint, ids: list[int]) -> set[int]:
    scores = torch.randn(1, SIZE)
    out = constraint(torch.tensor([ids]), scores)
    return set(torch.nonzero(torch.isfinite(out[0])).ravel().tolist())


CODES = set(V.motion_ids)
EVERYTHING = set(range(SIZE))


def test_outside_a_span_codes_and_end_are_masked():
    c = MotionConstraint(V)
    for ids in ([2, TEXT], [2, V.start_id, V.id_of(1), V.id_of(2), V.end_id, TEXT], [2]):
        assert allowed(c, ids) == EVERYTHING - CODES - {V.end_id}
    c.allow_open = False
    assert allowed(c, [2, TEXT]) == EVERYTHING - CODES - {V.end_id, V.start_id}


def test_inside_a_span_only_codes_then_end():
    c = MotionConstraint(V, max_motion_tokens=4)
    forced = [2, TEXT, V.start_id]  # a forced prompt ends with <Motion>
    assert allowed(c, forced) == CODES                                   # min 2 codes: no </Motion> yet
    assert allowed(c, forced + [V.id_of(0)]) == CODES
    assert allowed(c, forced + [V.id_of(0), V.id_of(5)]) == CODES | {V.end_id}
    assert allowed(c, forced + [V.id_of(k) for k in range(3)]) == CODES | {V.end_id}
    assert allowed(c, forced + [V.id_of(k) for k in range(4)]) == {V.end_id}  # the cap: only </Motion>
    # A second span after a closed one is counted from its own start.
    again = forced + [V.id_of(1), V.id_of(2), V.end_id, TEXT, V.start_id, V.id_of(3)]
    assert allowed(c, again) == CODES
    assert EOS not in allowed(c, forced + [V.id_of(0), V.id_of(5)])


def test_min_one_allows_one_token_and_the_cap_is_configurable_to_50():
    c = MotionConstraint(V, max_motion_tokens=50, min_motion_tokens=1)
    forced = [V.start_id]
    assert allowed(c, forced + [V.id_of(9)]) == CODES | {V.end_id}
    assert allowed(c, forced + [V.id_of(9)] * 49) == CODES | {V.end_id}
    assert allowed(c, forced + [V.id_of(9)] * 50) == {V.end_id}
    assert MotionConstraint(V).max_motion_tokens == 49
    with pytest.raises(ValueError, match="max_motion_tokens must be 1..50"):
        MotionConstraint(V, max_motion_tokens=51)
    with pytest.raises(ValueError, match="min_motion_tokens"):
        MotionConstraint(V, max_motion_tokens=3, min_motion_tokens=4)


def test_text_only_masks_all_514_tokens():
    c = MotionConstraint(V, text_only=True)
    assert allowed(c, [2, V.start_id]) == EVERYTHING - set(V.all_ids)


def test_rows_are_independent_and_input_is_not_changed():
    c = MotionConstraint(V, max_motion_tokens=2)
    ids = torch.tensor([[2, TEXT, TEXT], [V.start_id, V.id_of(0), V.id_of(1)]])
    scores = torch.zeros(2, SIZE)
    out = c(ids, scores)
    assert torch.equal(scores, torch.zeros(2, SIZE))
    assert set(torch.nonzero(torch.isfinite(out[0])).ravel().tolist()) == EVERYTHING - CODES - {V.end_id}
    assert set(torch.nonzero(torch.isfinite(out[1])).ravel().tolist()) == {V.end_id}


def test_narrow_logits_are_refused():
    with pytest.raises(ValueError, match="model and tokenizer differ"):
        MotionConstraint(V)(torch.tensor([[1]]), torch.zeros(1, 300))


@pytest.fixture(scope="module")
def fixture_llm(tmp_path_factory):
    from model_backend.convert.fixture import make_fixture
    from model_backend.llm.loader import load_llm
    return load_llm(make_fixture(tmp_path_factory.mktemp("constraints") / "model"), "cpu", "fp32")


@pytest.mark.parametrize("max_motion_tokens", [3, 12])
def test_forced_generation_on_the_fixture_model_is_a_well_formed_motion(fixture_llm, max_motion_tokens):
    from transformers import LogitsProcessorList

    from model_backend.llm import prompts as P

    llm, vocab = fixture_llm, fixture_llm.vocab
    ids = P.forced_generate_ids(llm.tokenizer, "a person jumps twice")
    constraint = MotionConstraint(vocab, max_motion_tokens=max_motion_tokens)
    for do_sample in (False, True):
        torch.manual_seed(0)
        out = llm.model.generate(torch.tensor([ids]), max_new_tokens=max_motion_tokens + 1, do_sample=do_sample,
                                 logits_processor=LogitsProcessorList([constraint]), eos_token_id=vocab.end_id)
        new = out[0, len(ids):].tolist()
        assert new[-1] == vocab.end_id
        codes = new[:-1]
        assert 2 <= len(codes) <= max_motion_tokens and all(vocab.is_motion(i) for i in codes)
    # Unconstrained, the untrained model does not close its span within the cap: the constraint is what does.
    free = llm.model.generate(torch.tensor([ids]), max_new_tokens=max_motion_tokens + 1, do_sample=False,
                              eos_token_id=vocab.end_id)[0, len(ids):].tolist()
    assert vocab.end_id not in free and len(free) == max_motion_tokens + 1
