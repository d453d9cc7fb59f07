"""Constrained decoding for motion spans: a transformers `LogitsProcessor`.

Inside an open `<Motion>` span only motion codes and `</Motion>` may follow; `</Motion>`
only once the span holds `min_motion_tokens` codes (so an empty or one-token motion,
which the model can never use, cannot be produced), and only `</Motion>` once it holds
`max_motion_tokens` codes. With a `prefix` (Extend: the encoded tail of the motion being
continued) the first codes of every span are forced to be the prefix, in order, and the
span must hold `min_motion_tokens` codes beyond it. Outside a span, motion codes and `</Motion>` are masked, and
`<Motion>` too when `allow_open` is False (free text, or the round limit reached). A
forced prompt (one ending in `<Motion>`) is simply a sequence whose last span is open.

The state is read from `input_ids` on every call (position of the last `<Motion>` and
`</Motion>`), so the processor is stateless between calls and works the same in
`model.generate` and in the engine's own loop. Masks are precomputed boolean tensors.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from .vocab import MotionVocab

__all__ = ["MotionConstraint", "MAX_MOTION_TOKENS", "DEFAULT_MAX_MOTION_TOKENS"]

MAX_MOTION_TOKENS = 50          # 200 frames at 20 fps: the longest motion the model was trained on
DEFAULT_MAX_MOTION_TOKENS = 49  # the authors' default (9.8 s)


class MotionConstraint(LogitsProcessor):
    """Masks logits so that motion spans are well formed (batch of any size, rows independent).

    `allow_open` may be changed between steps (the engine closes it after the last round).
    `text_only=True` masks all 514 motion ids: free-text tasks (captions, instructions).
    """

    def __init__(self, vocab: MotionVocab, *, max_motion_tokens: int = DEFAULT_MAX_MOTION_TOKENS,
                 min_motion_tokens: int = 2, allow_open: bool = True, text_only: bool = False,
                 prefix: Sequence[int] = ()):
        if not 1 <= int(max_motion_tokens) <= MAX_MOTION_TOKENS:
            raise ValueError(f"max_motion_tokens must be 1..{MAX_MOTION_TOKENS} (one token = 4 frames), "
                             f"not {max_motion_tokens}")
        if not 1 <= int(min_motion_tokens) <= int(max_motion_tokens):
            raise ValueError(f"min_motion_tokens must be 1..max_motion_tokens ({max_motion_tokens}), "
                             f"not {min_motion_tokens}")
        prefix = [int(k) for k in prefix]
        if any(not 0 <= k < vocab.count for k in prefix):
            raise ValueError(f"prefix codes must be codebook indices 0..{vocab.count - 1}")
        if len(prefix) + int(min_motion_tokens) > int(max_motion_tokens):
            raise ValueError(f"a prefix of {len(prefix)} codes leaves no room for {min_motion_tokens} new ones "
                             f"within max_motion_tokens ({max_motion_tokens})")
        self.vocab = vocab
        self.max_motion_tokens = int(max_motion_tokens)
        self.min_motion_tokens = int(min_motion_tokens)
        self.prefix = prefix
        self.allow_open = allow_open
        self.text_only = text_only
        self._masks: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _code_masks(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, codes + </Motion>) as boolean rows of the logits' width, cached per device."""
        key = (size, device)
        if key not in self._masks:
            if size < self.vocab.first_id + self.vocab.count:
                raise ValueError(f"the logits have {size} columns but the motion ids reach "
                                 f"{self.vocab.first_id + self.vocab.count - 1}: the model and tokenizer differ")
            codes = torch.zeros(size, dtype=torch.bool, device=device)
            codes[self.vocab.first_id:self.vocab.first_id + self.vocab.count] = True
            closing = codes.clone()
            closing[self.vocab.end_id] = True
            self._masks[key] = (codes, closing)
        return self._masks[key]

    def open_span_length(self, ids: torch.Tensor) -> int | None:
        """Number of codes in the open span at the end of the 1-D `ids`, or None outside a span."""
        positions = torch.arange(ids.shape[-1], device=ids.device)
        last_start = int(torch.where(ids == self.vocab.start_id, positions, -1).max()) if ids.numel() else -1
        if last_start < 0:
            return None
        last_end = int(torch.where(ids == self.vocab.end_id, positions, -1).max())
        if last_end > last_start:
            return None
        return ids.shape[-1] - 1 - last_start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return `scores` with forbidden tokens set to -inf (a new tensor; the input is not changed)."""
        codes, closing = self._code_masks(scores.shape[-1], scores.device)
        out = scores.clone()
        neg = float("-inf")
        for row in range(out.shape[0]):  # rows are independent sequences; the vocabulary is vectorised
            length = None if self.text_only else self.open_span_length(input_ids[row])
            if length is None:
                out[row, closing] = neg
                if self.text_only or not self.allow_open:
                    out[row, self.vocab.start_id] = neg
                continue
            if length < len(self.prefix):  # Extend: the span starts with the given codes
                allowed = torch.zeros_like(codes)
                allowed[self.vocab.first_id + self.prefix[length]] = True
            elif length >= self.max_motion_tokens:
                allowed = torch.zeros_like(codes)
                allowed[self.vocab.end_id] = True
            elif length < len(self.prefix) + self.min_motion_tokens:
                allowed = codes
            else:
                allowed = closing
            out[row] = out[row].masked_fill(~allowed, neg)
        return out
