"""The motion-token vocabulary: order, contiguous ids, never split, never made from plain text."""
from __future__ import annotations

import pytest

from model_backend.convert.fixture import build_base_tokenizer, build_tokenizer
from model_backend.llm.vocab import (MOTION_END, MOTION_START, NUM_MOTION_CODES, MotionVocab, MotionVocabError,
                                     add_motion_tokens, motion_token, motion_token_strings)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer) -> MotionVocab:
    return MotionVocab.from_tokenizer(tokenizer)


def test_token_strings_in_documented_order():
    tokens = motion_token_strings()
    assert len(tokens) == 514
    assert tokens[:4] == ["<Motion>", "</Motion>", "<Motion_0>", "<Motion_1>"]
    assert tokens[-1] == "<Motion_511>"
    assert motion_token(5) == "<Motion_5>"
    with pytest.raises(ValueError, match="0..511"):
        motion_token(512)


def test_layout_is_contiguous_after_the_base_vocabulary(tokenizer, vocab):
    base = len(build_base_tokenizer())
    assert vocab.start_id == base  # appended after the base vocabulary, like 256000 for Gemma-2
    assert (vocab.end_id, vocab.first_id, vocab.count) == (base + 1, base + 2, NUM_MOTION_CODES)
    assert len(tokenizer) == base + 514
    for k in (0, 1, 255, 511):
        assert tokenizer.convert_tokens_to_ids(motion_token(k)) == vocab.start_id + 2 + k
    assert tokenizer.convert_tokens_to_ids([MOTION_START, MOTION_END]) == [vocab.start_id, vocab.end_id]


def test_a_motion_token_is_one_id_both_ways(tokenizer, vocab):
    ids = tokenizer("<Motion_5>", add_special_tokens=False).input_ids
    assert ids == [vocab.id_of(5)]
    assert tokenizer.decode(ids) == "<Motion_5>"
    span = tokenizer("<Motion><Motion_0><Motion_511></Motion>", add_special_tokens=False).input_ids
    assert span == [vocab.start_id, vocab.id_of(0), vocab.id_of(511), vocab.end_id]
    # Embedded in text the token is still matched whole.
    mixed = tokenizer("walk<Motion_7>run", add_special_tokens=False).input_ids
    assert vocab.id_of(7) in mixed and sum(vocab.is_motion(i) for i in mixed) == 1


def test_plain_text_never_becomes_a_motion_token(tokenizer, vocab):
    ids = tokenizer("Motion_5 Motion 5 <Motion 5> Motion>", add_special_tokens=False).input_ids
    assert len(ids) > 4
    assert not any(i in vocab.all_ids for i in ids)
    # With split_special_tokens the literal tag in user text is read as characters.
    literal = tokenizer("<Motion_5></Motion>", add_special_tokens=False, split_special_tokens=True).input_ids
    assert len(literal) > 2 and not any(i in vocab.all_ids for i in literal)
    assert tokenizer.decode(literal) == "<Motion_5></Motion>"


def test_code_and_id_conversions(vocab):
    assert vocab.code_of(vocab.id_of(300)) == 300
    assert list(vocab.motion_ids) == [vocab.id_of(k) for k in range(512)]
    assert vocab.is_motion(vocab.first_id) and vocab.is_motion(vocab.first_id + 511)
    assert not vocab.is_motion(vocab.start_id) and not vocab.is_motion(vocab.end_id)
    assert not vocab.is_motion(vocab.first_id + 512) and not vocab.is_motion(2)
    with pytest.raises(ValueError, match="not a motion code"):
        vocab.code_of(vocab.end_id)
    with pytest.raises(ValueError):
        vocab.id_of(-1)


def test_manifest_entry_round_trips(vocab):
    entry = vocab.to_manifest()
    assert entry["start"] == "<Motion>" and entry["end"] == "</Motion>" and entry["count"] == 512
    assert MotionVocab.from_manifest(entry) == vocab


def test_adding_twice_changes_nothing(tokenizer, vocab):
    before = len(tokenizer)
    add_motion_tokens(tokenizer)
    assert len(tokenizer) == before
    assert MotionVocab.from_tokenizer(tokenizer) == vocab


def test_a_tokenizer_without_motion_tokens_is_refused():
    with pytest.raises(MotionVocabError, match="lacks 514 of the 514 motion tokens"):
        MotionVocab.from_tokenizer(build_base_tokenizer())


def test_partial_or_reordered_tokens_are_refused():
    partial = build_base_tokenizer()
    partial.add_tokens(["<Motion>"], special_tokens=True)
    with pytest.raises(MotionVocabError, match="already holds 1 of the 514"):
        add_motion_tokens(partial)

    shuffled = build_base_tokenizer()
    tokens = motion_token_strings()
    shuffled.add_tokens(tokens[2:] + tokens[:2], special_tokens=True)  # codes first, markers last
    with pytest.raises(MotionVocabError, match="not contiguous"):
        MotionVocab.from_tokenizer(shuffled)
