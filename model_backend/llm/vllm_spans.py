"""The motion-span rules inside vLLM: a v1 logits processor that applies `MotionConstraint` per request.

vLLM runs this in its engine-core process, on every decoding step of every request in
the batch. A request opts in with `SamplingParams(extra_args={"irg_motion": spec})`
(`span_spec`); others are left alone. The rules are the transformers engine's own
(`constraints.MotionConstraint`, applied to prompt + output ids), so both engines mask
exactly the same tokens: 2..max motion codes inside `<Motion>`...`</Motion>`, none
outside a span, no EOS inside one. One thing the transformers engine changes between
steps from outside, vLLM must decide itself: after `max_spans` closed spans no new
`<Motion>` may open (the engine's round limit), so the count of `</Motion>` in the
output is part of the state here.

A per-token cost of O(sequence length) (at most a few thousand ids) keeps this simple;
it is small next to a forward pass.
"""
from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from .constraints import MotionConstraint
from .vocab import MotionVocab

__all__ = ["MotionSpanProcessor", "SpanRule", "span_spec", "FQCN", "SPEC_KEY"]

SPEC_KEY = "irg_motion"
FQCN = f"{__name__}:MotionSpanProcessor"


def span_spec(constraint: MotionConstraint, max_spans: int) -> dict[str, Any]:
    """What a request sends to the processor (plain values: it crosses a process boundary)."""
    vocab = constraint.vocab
    return {"start_id": vocab.start_id, "end_id": vocab.end_id, "first_id": vocab.first_id, "count": vocab.count,
            "max_motion_tokens": constraint.max_motion_tokens, "min_motion_tokens": constraint.min_motion_tokens,
            "allow_open": constraint.allow_open, "text_only": constraint.text_only, "max_spans": int(max_spans),
            "prefix": [int(i) for i in constraint.prefix]}


class SpanRule:
    """One request's rule: `(prompt_ids, output_ids, logits_row) -> logits_row`."""

    def __init__(self, spec: dict[str, Any]):
        vocab = MotionVocab(spec["start_id"], spec["end_id"], spec["first_id"], spec["count"])
        self.constraint = MotionConstraint(vocab, max_motion_tokens=spec["max_motion_tokens"],
                                           min_motion_tokens=spec["min_motion_tokens"],
                                           allow_open=spec["allow_open"], text_only=spec["text_only"],
                                           prefix=spec.get("prefix", ()))
        self.allow_open = bool(spec["allow_open"])
        self.max_spans = int(spec["max_spans"])
        self.end_id = vocab.end_id

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self.constraint.allow_open = self.allow_open and output_ids.count(self.end_id) < self.max_spans
        ids = torch.tensor([list(prompt_ids) + list(output_ids)], dtype=torch.long)
        return self.constraint(ids, logits[None].float())[0].to(logits.dtype)


class MotionSpanProcessor(AdapterLogitsProcessor):
    """vLLM's per-request adapter around `SpanRule` (requests without the spec are untouched)."""

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get(SPEC_KEY)
        if spec is not None:
            SpanRule(spec)  # raises ValueError on a bad spec

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is greedy

    def new_req_logits_processor(self, params: Any) -> SpanRule | None:
        spec = (params.extra_args or {}).get(SPEC_KEY)
        return None if spec is None else SpanRule(spec)
