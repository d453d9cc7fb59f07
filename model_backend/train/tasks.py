"""Training examples in the exact IRG prompt formats, as token ids with a response mask.

Every prompt comes from `model_backend.prompts` (never re-typed here), so the ids are
the ones the engine builds at inference. An example is the prompt ids (no loss) and
the response ids (loss), ending in EOS:

* direct: `Generate a motion that depicts {caption}.` + forced `<Motion>` -> codes, `</Motion>`
* caption: `{motion}` + `Provide a detailed description...` -> a sentence
* analyse: `Determine the critical aspects...` -> the analysis
* assess / instruction: `Motion: {motion}. Goal text: ...` -> critique / instruction
  (`No refinements needed.` when the motion shows the goal)
* refine: `... Refine the motion according to the instruction: ...` + `<Motion>` -> codes
* trace: the interleaved prompt -> `<think>` plan, analysis, plan, motion, plan,
  assessment, [plan, refined motion, plan, assessment]..., finishing plan, `</think>`,
  written piece by piece exactly as section 3.1 of the interface doc says. A trace's
  first motion may show another label (mostly a look-alike from the same family),
  which the assessment names and the refinement fixes.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..llm import prompts as P
from . import captions as C

__all__ = ["Clip", "Example", "TASK_WEIGHTS", "MAX_MOTION_TOKENS", "direct_example", "caption_example",
           "analyse_example", "assess_example", "instruction_example", "refine_example", "trace_example",
           "sample_examples", "tokenizer_corpus", "crop"]

MAX_MOTION_TOKENS = 49   # 9.8 s at 20 fps, the longest motion the real model was trained on
IGNORE = -100            # label of a prompt position: no loss there
MAX_HOLD = 3             # longest run of one repeated code kept in training motions (0.6 s)

# How often each task is drawn; traces carry the most, they teach every part of the grammar.
TASK_WEIGHTS = {"trace": 0.36, "direct": 0.24, "analyse": 0.12, "refine": 0.07, "caption": 0.07, "assess": 0.07,
                "instruction": 0.07}
WRONG_FIRST = (0.6, 0.3, 0.1)   # chance of 0, 1, 2 wrong motions before the right one in a trace
SAME_FAMILY = 0.8               # a wrong motion comes from a look-alike label this often


@dataclass(frozen=True)
class Clip:
    """One motion clip: its codebook indices, content and style labels, and split."""

    name: str
    codes: tuple[int, ...]
    content: str
    style: str
    split: str = "train"


@dataclass(frozen=True)
class Example:
    """Prompt ids (no loss) and response ids (loss); `task` names the kind."""

    task: str
    prompt: tuple[int, ...]
    response: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return list(self.prompt) + list(self.response)

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt) + list(self.response)


def squeeze_holds(codes: Sequence[int], max_hold: int = MAX_HOLD) -> list[int]:
    """`codes` with every run of one repeated code cut to `max_hold` tokens.

    A third of the dataset's consecutive codes repeat (standing before and after the action,
    holding a raised hand). Trained on that, greedy decoding falls into repeating one code
    forever; with holds cut to 0.6 s it keeps moving.
    """
    out: list[int] = []
    for k in codes:
        if len(out) < max_hold or any(c != k for c in out[-max_hold:]):
            out.append(int(k))
    return out


def crop(codes: Sequence[int], rng: random.Random, max_len: int = MAX_MOTION_TOKENS) -> list[int]:
    """A clip's codes (holds squeezed) whole, or a random `max_len` window of a longer clip.

    Whole clips, not shorter windows: a label shows over the whole clip (a turn reaches its
    angle, a wave its swings), and generated motions should too.
    """
    codes = squeeze_holds(codes)
    if len(codes) <= max_len:
        return codes
    start = rng.randint(0, len(codes) - max_len)
    return codes[start:start + max_len]


# ---------------------------------------------------------------- pieces

def _text(tokenizer: Any, text: str) -> list[int]:
    return P.piece_ids(tokenizer, text)


def _eos(tokenizer: Any) -> list[int]:
    return [int(tokenizer.eos_token_id)]


def _motion_answer(tokenizer: Any, codes: Sequence[int]) -> list[int]:
    """The codes and `</Motion>` that follow a forced `<Motion>`."""
    return P.motion_span_ids(tokenizer, codes)[1:]


# ---------------------------------------------------------------- one task each

def direct_example(tokenizer: Any, caption: str, codes: Sequence[int]) -> Example:
    """Text to motion with the forced single-task prompt."""
    prompt = P.forced_generate_ids(tokenizer, caption)
    return Example("direct", tuple(prompt), tuple(_motion_answer(tokenizer, codes) + _eos(tokenizer)))


def caption_example(tokenizer: Any, codes: Sequence[int], description: str) -> Example:
    """Motion to text."""
    return Example("caption", tuple(P.caption_ids(tokenizer, codes)),
                   tuple(_text(tokenizer, description) + _eos(tokenizer)))


def analyse_example(tokenizer: Any, caption: str, analysis: str) -> Example:
    """The critical aspects of a goal."""
    return Example("analyse", tuple(P.analyse_ids(tokenizer, caption)),
                   tuple(_text(tokenizer, analysis) + _eos(tokenizer)))


def assess_example(tokenizer: Any, caption: str, codes: Sequence[int], critique: str) -> Example:
    """A motion assessed against a goal."""
    return Example("assess", tuple(P.assess_ids(tokenizer, caption, codes)),
                   tuple(_text(tokenizer, critique) + _eos(tokenizer)))


def instruction_example(tokenizer: Any, caption: str, codes: Sequence[int], instruction: str) -> Example:
    """How to refine a motion (`No refinements needed.` when it already shows the goal)."""
    return Example("instruction", tuple(P.instruction_ids(tokenizer, caption, codes)),
                   tuple(_text(tokenizer, instruction) + _eos(tokenizer)))


def refine_example(tokenizer: Any, caption: str, codes: Sequence[int], instruction: str,
                   refined: Sequence[int]) -> Example:
    """An instructed refinement: the motion that follows the instruction (forced `<Motion>`)."""
    prompt = P.refine_ids(tokenizer, caption, codes, instruction)
    return Example("refine", tuple(prompt), tuple(_motion_answer(tokenizer, refined) + _eos(tokenizer)))


def trace_example(tokenizer: Any, caption: str, analysis: str,
                  rounds: Sequence[tuple[Sequence[int], str, str]]) -> Example:
    """An interleaved trace: `rounds` are (codes, assessment, refinement); the last must be satisfied."""
    if not rounds or rounds[-1][2] != P.SATISFIED or any(r[2] == P.SATISFIED for r in rounds[:-1]):
        raise ValueError("a trace ends with its only 'No refinements needed.' round")
    ids = (_text(tokenizer, P.THINK_OPEN) + P.block_ids(tokenizer, "plan", P.PLAN_ANALYZE)
           + P.block_ids(tokenizer, "analyze", analysis) + P.block_ids(tokenizer, "plan", P.PLAN_GENERATE))
    for n, (codes, critique, refinement) in enumerate(rounds):
        if n:
            ids += P.block_ids(tokenizer, "plan", P.PLAN_REFINE)
        ids += P.generate_block_ids(tokenizer, codes) + P.block_ids(tokenizer, "plan", P.PLAN_ASSESS)
        ids += P.block_ids(tokenizer, "assess", P.assessment_text(critique, refinement, tokenizer))
    ids += P.block_ids(tokenizer, "plan", P.PLAN_FINISH) + _text(tokenizer, P.THINK_CLOSE) + _eos(tokenizer)
    return Example("trace", tuple(P.interleaved_prompt_ids(tokenizer, caption)), tuple(ids))


# ---------------------------------------------------------------- sampling

class _Pool:
    """Train clips by content label, and the look-alike labels of each."""

    def __init__(self, clips: Iterable[Clip]):
        self.by_label: dict[str, list[Clip]] = {}
        for clip in clips:
            self.by_label.setdefault(clip.content, []).append(clip)
        if len(self.by_label) < 2:
            raise ValueError(f"training needs clips of at least two content labels, got {sorted(self.by_label)}")
        self.labels = sorted(self.by_label)

    def other(self, content: str, rng: random.Random) -> str:
        family = next((f for f in C.FAMILIES if content in f), frozenset())
        alike = [n for n in self.labels if n in family and n != content]
        if alike and rng.random() < SAME_FAMILY:
            return rng.choice(alike)
        return rng.choice([n for n in self.labels if n != content])

    def codes(self, content: str, rng: random.Random) -> list[int]:
        return crop(rng.choice(self.by_label[content]).codes, rng)


def _one(tokenizer: Any, pool: _Pool, task: str, rng: random.Random) -> Example:
    clip = rng.choice(pool.by_label[rng.choice(pool.labels)])  # every label as often, however many clips
    target, codes = clip.content, crop(clip.codes, rng)
    text = C.caption(target, clip.style, rng)
    if task == "direct":
        return direct_example(tokenizer, text, codes)
    if task == "caption":
        return caption_example(tokenizer, codes, C.describe(target, clip.style, rng))
    if task == "analyse":
        return analyse_example(tokenizer, text, C.analysis(target, clip.style))
    wrong = pool.other(target, rng)
    if task in ("assess", "instruction"):
        if rng.random() < 0.5:
            shown, critique, refinement = codes, C.matched_assessment(target), P.SATISFIED
        else:
            shown, critique, refinement = pool.codes(wrong, rng), C.assessment(wrong, target), C.instruction(wrong, target)
        if task == "assess":
            return assess_example(tokenizer, text, shown, critique)
        return instruction_example(tokenizer, text, shown, refinement)
    if task == "refine":
        return refine_example(tokenizer, text, pool.codes(wrong, rng), C.instruction(wrong, target), codes)
    rounds: list[tuple[Sequence[int], str, str]] = []
    shown_labels: list[str] = []
    for _ in range(rng.choices(range(len(WRONG_FIRST)), weights=WRONG_FIRST)[0]):
        wrong = pool.other(target, rng)
        if wrong not in shown_labels:
            shown_labels.append(wrong)
            rounds.append((pool.codes(wrong, rng), C.assessment(wrong, target), C.instruction(wrong, target)))
    rounds.append((codes, C.matched_assessment(target), P.SATISFIED))
    return trace_example(tokenizer, text, C.analysis(target, clip.style), rounds)


def sample_examples(tokenizer: Any, clips: Iterable[Clip], count: int, seed: int,
                    weights: dict[str, float] | None = None) -> list[Example]:
    """`count` examples drawn from the train clips, deterministic for `seed`."""
    weights = weights or TASK_WEIGHTS
    rng = random.Random(seed)
    pool = _Pool(c for c in clips if c.split == "train")
    tasks = rng.choices(list(weights), weights=list(weights.values()), k=count)
    return [_one(tokenizer, pool, task, rng) for task in tasks]


# ---------------------------------------------------------------- tokenizer corpus

_MOTION_STRINGS = re.compile(r"</?Motion(?:_\d+)?>")


def tokenizer_corpus(contents: Sequence[str], styles: Sequence[str]) -> list[str]:
    """Every fixed prompt and trace string with the training captions and the model's own sentences.

    Held-out wordings are not in it: the tokenizer is part of what the model learned.
    """
    captions = C.all_captions(contents, styles)
    lines = list(captions)
    for n, text in enumerate(captions[::37]):
        users = (P.interleaved_user(text), P.generate_user(text), P.analyse_user(text), P.assess_user(text, [0]),
                 P.instruction_user(text, [0]), P.refine_user(text, [0], "x"), P.caption_user([0]))
        lines += [_MOTION_STRINGS.sub("", P.wrap_prompt(u)) for u in users]
    tags = [f"[{b}]" for b in P.BLOCKS] + [f"[/{b}]" for b in P.BLOCKS] + [P.THINK_OPEN, P.THINK_CLOSE, "\n"]
    plans = [P.PLAN_ANALYZE, P.PLAN_GENERATE, P.PLAN_ASSESS, P.PLAN_REFINE, P.PLAN_FINISH, P.SATISFIED]
    lines += (tags + plans) * 200
    for target in contents:
        lines += [C.analysis(target, s) for s in styles] + [C.matched_assessment(target)]
        for actual in contents:
            if actual != target:
                lines.append(P.assessment_text(C.assessment(actual, target), C.instruction(actual, target)))
    return lines


def lengths(examples: Iterable[Example]) -> np.ndarray:
    """Token counts of examples (for batching and the model card)."""
    return np.array([len(e.prompt) + len(e.response) for e in examples])
