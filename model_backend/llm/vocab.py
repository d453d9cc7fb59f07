"""The 514 motion tokens IRG-MotionLLM adds to the Gemma-2 vocabulary, and their id layout.

Tokens are added in this order: `<Motion>`, `</Motion>`, `<Motion_0>` ... `<Motion_511>`,
so with the stock Gemma-2 tokenizer they get ids 256000, 256001 and 256002 + k. Ids are
never hard-coded: `MotionVocab.from_tokenizer` resolves them and checks the layout.
Works with any Hugging Face tokenizer object (duck-typed: no torch, no transformers import).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wire.protocol import NUM_MOTION_CODES  # one definition, shared with the add-on

MOTION_START = "<Motion>"
MOTION_END = "</Motion>"


class MotionVocabError(ValueError):
    """A tokenizer whose motion tokens are missing or not laid out as the model was trained."""


def motion_token(k: int) -> str:
    """The token string of codebook index k: `<Motion_k>`."""
    if not 0 <= int(k) < NUM_MOTION_CODES:
        raise ValueError(f"motion code {k} is outside 0..{NUM_MOTION_CODES - 1}")
    return f"<Motion_{int(k)}>"


def motion_token_strings() -> list[str]:
    """All 514 token strings in the order they are added to the vocabulary."""
    return [MOTION_START, MOTION_END] + [motion_token(k) for k in range(NUM_MOTION_CODES)]


def add_motion_tokens(tokenizer: Any) -> "MotionVocab":
    """Add the 514 motion tokens in the documented order, as special tokens; return their ids.

    Special tokens are matched before the byte/BPE model runs, so text never splits
    them, and `tokenizer(text, split_special_tokens=True)` reads user text literally.
    A tokenizer that already holds all of them with the right layout is left as is;
    one that holds only some of them is refused (the ids would not match training).
    """
    tokens = motion_token_strings()
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if len(present) == len(tokens):
        return MotionVocab.from_tokenizer(tokenizer)  # raises if the existing layout is wrong
    if present:
        raise MotionVocabError(
            f"the tokenizer already holds {len(present)} of the 514 motion tokens (first: {present[0]}); "
            "start from the base Gemma-2 tokenizer so the ids match the checkpoint")
    tokenizer.add_tokens(tokens, special_tokens=True)
    return MotionVocab.from_tokenizer(tokenizer)


@dataclass(frozen=True)
class MotionVocab:
    """Where the motion tokens sit in a vocabulary: `<Motion>`, `</Motion>`, then `count` codes."""

    start_id: int
    end_id: int
    first_id: int
    count: int = NUM_MOTION_CODES

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "MotionVocab":
        """Resolve the ids with `convert_tokens_to_ids` and assert the documented layout."""
        vocab = tokenizer.get_vocab()
        tokens = motion_token_strings()
        missing = [t for t in tokens if t not in vocab]
        if missing:
            raise MotionVocabError(
                f"the tokenizer lacks {len(missing)} of the 514 motion tokens (first: {missing[0]}); "
                "it is not an IRG-MotionLLM tokenizer: convert the checkpoint with `irg-motion convert`")
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
        start = ids[0]
        bad = [(t, i, start + n) for n, (t, i) in enumerate(zip(tokens, ids)) if i != start + n]
        if bad:
            tok, got, want = bad[0]
            raise MotionVocabError(
                f"motion tokens are not contiguous: {tok} has id {got}, expected {want} "
                f"(id({MOTION_START}) = {start}; layout <Motion>, </Motion>, <Motion_0>..<Motion_511>). "
                "The tokens must be added in that order to the base tokenizer, as the checkpoint was trained")
        return cls(start_id=start, end_id=start + 1, first_id=start + 2, count=NUM_MOTION_CODES)

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> "MotionVocab":
        """From a manifest's "motion_tokens" entry."""
        return cls(start_id=int(entry["start_id"]), end_id=int(entry["end_id"]),
                   first_id=int(entry["first_id"]), count=int(entry["count"]))

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's "motion_tokens" entry."""
        return {"start": MOTION_START, "end": MOTION_END, "start_id": self.start_id,
                "end_id": self.end_id, "first_id": self.first_id, "count": self.count}

    @property
    def motion_ids(self) -> range:
        """Ids of `<Motion_0>` .. `<Motion_{count-1}>` (not the start/end markers)."""
        return range(self.first_id, self.first_id + self.count)

    @property
    def all_ids(self) -> range:
        """All 514 ids: the markers and the codes."""
        return range(self.start_id, self.first_id + self.count)

    def is_motion(self, token_id: int) -> bool:
        """True for a motion code token (`<Motion_k>`), False for markers and text."""
        return self.first_id <= int(token_id) < self.first_id + self.count

    def code_of(self, token_id: int) -> int:
        """Codebook index k of the id of `<Motion_k>`."""
        if not self.is_motion(token_id):
            raise ValueError(f"token id {token_id} is not a motion code (ids {self.first_id}.."
                             f"{self.first_id + self.count - 1})")
        return int(token_id) - self.first_id

    def id_of(self, k: int) -> int:
        """Token id of `<Motion_k>`."""
        if not 0 <= int(k) < self.count:
            raise ValueError(f"motion code {k} is outside 0..{self.count - 1}")
        return self.first_id + int(k)
