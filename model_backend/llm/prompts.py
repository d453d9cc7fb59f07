"""Every IRG-MotionLLM prompt, byte for byte, and the token ids the model was trained on.

The strings come from the interface doc (section 3). Two facts shape this module:

* Prompts are plain text (no chat template): `{system}\\n\\nUser: {user}\\n\\n Response:`,
  tokenised as ONE string after a single BOS.
* A written trace is tokenised PIECE BY PIECE and the ids concatenated (`<think>`;
  per block: opening tag, the block's text alone, closing tag, `\\n`; a motion is
  `<Motion>`, the codes, `</Motion>`). Tokenising a whole trace as one string can
  merge characters across a tag boundary into ids the model never saw there.

Decisions (documented here because the doc leaves them open):

* `\\n` in the doc's strings is a real newline (LF), in the interleaved user text
  (`...before each step.` LF `Goal Text: {caption}`), the wrapper, the caption task
  and the assessment block. The doc writes every other newline of the wrapper the
  same way, and the fixture corpus and the upstream Python literals use real newlines.
* `..` is collapsed to `.` once (`str.replace`) over the whole user text after
  substitution, so a caption ending in `.` gives one full stop; `...` becomes `..`.
* User text (captions, instructions, model text written back into a trace) is
  sanitised by REMOVING every special token string (the 514 motion tokens, Gemma's
  control tokens, and whatever the tokenizer marks special) until none is left (removal
  can join two halves into a new one), in one linear pass, then whitespace runs become
  one space. Removal, not escaping: these strings mean nothing in a caption, and a prompt
  tokenised as one string cannot hold them as plain text. Every id builder also
  checks its result: the only special ids are the BOS and the motion ids it placed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .vocab import MOTION_END, MOTION_START, MotionVocab, motion_token

__all__ = [
    "SYSTEM", "INTERLEAVED_TASK", "GENERATE_TASK", "ANALYSE_TASK", "ASSESS_TASK",
    "INSTRUCTION_TASK", "REFINE_TASK", "CAPTION_TASK", "PLAN_ANALYZE", "PLAN_GENERATE",
    "PLAN_ASSESS", "PLAN_REFINE", "PLAN_FINISH", "SATISFIED", "THINK_OPEN", "THINK_CLOSE",
    "PromptError", "sanitize_user_text", "wrap_prompt", "motion_text", "assessment_text",
    "interleaved_user", "generate_user", "analyse_user", "assess_user", "instruction_user",
    "refine_user", "caption_user", "prompt_ids", "interleaved_prompt_ids", "analysis_prefix_ids",
    "injected_trace_ids", "forced_generate_ids", "analyse_ids", "assess_ids", "instruction_ids",
    "refine_ids", "caption_ids", "block_ids", "generate_block_ids", "motion_span_ids", "piece_ids",
]

SYSTEM = "You are an assistant who helps users understand or generate 3D human motion representations."

INTERLEAVED_TASK = (
    "Given a text outlining a human motion objective, employ a step-by-step thought process to realize "
    "the motion: (1) analyze the text, providing a clear explanation of the reasoning to identify essential "
    "elements; (2) conduct several rounds of motion generation and self-assessment until the motion is "
    "satisfactory. Wrap all responses in <think> and </think> tags, and formulate a plan before each step."
    "\nGoal Text: {caption}")
GENERATE_TASK = "Generate a motion that depicts {caption}."
ANALYSE_TASK = "Determine the critical aspects to address prior to generating a motion that represents {caption}."
ASSESS_TASK = "Motion: {motion}. Goal text: {caption}. Assess the alignment between the motion and the goal."
INSTRUCTION_TASK = ("Motion: {motion}. Goal text: {caption}. "
                    "Determine how to refine the generated motion for better alignment.")
REFINE_TASK = "Motion: {motion}. Goal text: {caption}. Refine the motion according to the instruction: {instruction}."
CAPTION_TASK = "{motion}\nProvide a detailed description of the motion."

PLAN_ANALYZE = "I need to analyze the goal and identify the critical aspects to generate the motion."
PLAN_GENERATE = "I need to generate a motion according to the previous analysis."
PLAN_ASSESS = ("I need to assess the alignment between the generated motion and the goal text, "
               "then provide specific refinement instructions for improvement.")
PLAN_REFINE = "I need to refine the motion according to the instruction."
PLAN_FINISH = "I need to finish thinking as the satisfactory motion is generated."
SATISFIED = "No refinements needed."

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BLOCKS = ("plan", "analyze", "generate", "assess")

# Always removed from user text, whatever the tokenizer: the motion tokens (any index up to
# 12 digits, so `<Motion_999>` cannot slip through either) and Gemma's control tokens.
_MAX_DIGITS = 12
_BUILTIN_SPECIALS = (r"</?Motion(?:_\d{1,%d})?>|<(?:bos|eos|pad|unk|mask|start_of_turn|end_of_turn|unused\d{1,%d})>"
                     r"|\[@BOS@\]") % (_MAX_DIGITS, _MAX_DIGITS)
_BUILTIN_LONGEST = len("<start_of_turn>") + _MAX_DIGITS  # no built-in special is longer


class PromptError(ValueError):
    """A prompt that cannot be built (empty caption, bad motion tokens, tokenizer mismatch)."""


# ---------------------------------------------------------------- sanitising

@dataclass(frozen=True)
class _Remover:
    """What one pass needs: a regex matching a special token at the end of a text, how far
    back it can reach, and the characters a special token can end with."""

    at_end: re.Pattern[str]
    window: int
    last_chars: frozenset[str]


_remover_cache: dict[int, tuple[Any, _Remover]] = {}


def _remover(tokenizer: Any) -> _Remover:
    """The remover for the built-in specials and every special token string of `tokenizer` (cached)."""
    cached = _remover_cache.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    strings = set(getattr(tokenizer, "all_special_tokens", []) or []) if tokenizer is not None else set()
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token.content))
    strings.discard("")
    # Longest first, so `<Motion_12>` wins over a shorter overlapping token.
    alternatives = [_BUILTIN_SPECIALS] + [re.escape(s) for s in sorted(strings, key=len, reverse=True)]
    remover = _Remover(re.compile("(?:" + "|".join(alternatives) + r")\Z"),
                       max([_BUILTIN_LONGEST, *map(len, strings)]),
                       frozenset({">", "]"} | {s[-1] for s in strings}))
    _remover_cache[id(tokenizer)] = (tokenizer, remover)
    return remover


def sanitize_user_text(text: str, tokenizer: Any = None) -> str:
    """`text` with every special token string removed and whitespace runs made one space.

    Removes the motion tokens (`<Motion>`, `</Motion>`, `<Motion_k>`), Gemma's control
    tokens (`<bos>`, `<eos>`, `<pad>`, `<start_of_turn>`, ...) and, given a tokenizer,
    every token it marks special. One pass, linear in the length: characters are
    appended one by one and a special token that appears at the end is dropped at once,
    so removal that joins two halves (`<bo<bos>s>`) is caught as it happens and the
    result holds none. The result never tokenises into a special id.
    """
    if not isinstance(text, str):
        raise PromptError(f"expected text, got {type(text).__name__}")
    remover = _remover(tokenizer)
    out: list[str] = []
    for char in text:
        out.append(char)
        if char in remover.last_chars:
            found = remover.at_end.search("".join(out[-remover.window:]))
            if found:
                del out[len(out) - (found.end() - found.start()):]
    return " ".join("".join(out).split())


def _clean_caption(caption: str, tokenizer: Any, what: str = "prompt") -> str:
    cleaned = sanitize_user_text(caption, tokenizer)
    if not cleaned:
        raise PromptError(f"the {what} is empty (after removing special tokens such as <Motion>): "
                          f"describe the motion in words")
    return cleaned


def _collapse(user_text: str) -> str:
    """`..` -> `.` once over the substituted user text, as the model was trained."""
    return user_text.replace("..", ".")


# ---------------------------------------------------------------- strings

def wrap_prompt(user_text: str) -> str:
    """The plain-text prompt around one user text (no chat template)."""
    return f"{SYSTEM}\n\nUser: {user_text}\n\n Response:"


def _codes(codes: Iterable[int], count: int = 512) -> list[int]:
    out = [int(k) for k in codes]
    bad = [k for k in out if not 0 <= k < count]
    if bad:
        raise PromptError(f"motion token {bad[0]} is outside the codebook 0..{count - 1}")
    if not out:
        raise PromptError("the motion has no tokens: pass at least one codebook index")
    return out


def motion_text(codes: Iterable[int]) -> str:
    """`<Motion><Motion_a><Motion_b>...</Motion>` for codebook indices a, b, ..."""
    return MOTION_START + "".join(motion_token(k) for k in _codes(codes)) + MOTION_END


def assessment_text(assessment: str, refinement: str, tokenizer: Any = None) -> str:
    """The text of an `[assess]` block: `Assessment: {a}` LF `Refinement: {r}` (sanitised, `..` collapsed)."""
    a = sanitize_user_text(assessment, tokenizer)
    r = sanitize_user_text(refinement, tokenizer)
    return _collapse(f"Assessment: {a}\nRefinement: {r}")


def interleaved_user(caption: str, tokenizer: Any = None) -> str:
    """User text of the interleaved reasoning task (the paraphrase the authors evaluate with)."""
    return _collapse(INTERLEAVED_TASK.format(caption=_clean_caption(caption, tokenizer)))


def generate_user(caption: str, tokenizer: Any = None) -> str:
    """User text of the single-task generate prompt (forced `<Motion>` follows)."""
    return _collapse(GENERATE_TASK.format(caption=_clean_caption(caption, tokenizer)))


def analyse_user(caption: str, tokenizer: Any = None) -> str:
    """User text asking for the critical aspects of a caption (free text answer)."""
    return _collapse(ANALYSE_TASK.format(caption=_clean_caption(caption, tokenizer)))


def assess_user(caption: str, codes: Iterable[int], tokenizer: Any = None) -> str:
    """User text asking for an assessment of a motion against a caption (free text answer)."""
    return _collapse(ASSESS_TASK.format(motion=motion_text(codes), caption=_clean_caption(caption, tokenizer)))


def instruction_user(caption: str, codes: Iterable[int], tokenizer: Any = None) -> str:
    """User text asking for a refinement instruction (`No refinements needed.` means done)."""
    return _collapse(INSTRUCTION_TASK.format(motion=motion_text(codes), caption=_clean_caption(caption, tokenizer)))


def refine_user(caption: str, codes: Iterable[int], instruction: str, tokenizer: Any = None) -> str:
    """User text of the instructed refinement (forced `<Motion>` follows)."""
    return _collapse(REFINE_TASK.format(motion=motion_text(codes), caption=_clean_caption(caption, tokenizer),
                                        instruction=_clean_caption(instruction, tokenizer, "instruction")))


def caption_user(codes: Iterable[int]) -> str:
    """User text asking for a description of a motion (free text answer)."""
    return CAPTION_TASK.format(motion=motion_text(codes))


# ---------------------------------------------------------------- token ids

@dataclass(frozen=True)
class _Facts:
    bos_id: int
    vocab: MotionVocab
    special_ids: frozenset[int]


_facts_cache: dict[int, tuple[Any, _Facts]] = {}


def _facts(tokenizer: Any) -> _Facts:
    cached = _facts_cache.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise PromptError("the tokenizer has no BOS token; it is not a Gemma-2 / IRG tokenizer")
    vocab = MotionVocab.from_tokenizer(tokenizer)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            special.add(int(i))
    special.update(vocab.all_ids)
    facts = _Facts(int(bos), vocab, frozenset(special))
    _facts_cache[id(tokenizer)] = (tokenizer, facts)
    return facts


def piece_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of one piece of text tokenised alone: no BOS, no special-token handling added."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _check_specials(tokenizer: Any, ids: Sequence[int], allowed: Sequence[int], what: str) -> None:
    """Fail if `ids` holds special ids other than exactly `allowed`, in order (injection guard)."""
    special = _facts(tokenizer).special_ids
    found = [i for i in ids if i in special]
    if found != list(allowed):
        raise PromptError(f"the {what} tokenised into unexpected special tokens {found[:8]} "
                          f"(expected {list(allowed)[:8]}); the tokenizer does not match the model folder")


def prompt_ids(tokenizer: Any, user_text: str, codes: Sequence[int] = ()) -> list[int]:
    """BOS + the wrapped prompt tokenised as one string; `codes` is the motion inside it, if any."""
    facts = _facts(tokenizer)
    ids = [facts.bos_id] + piece_ids(tokenizer, wrap_prompt(user_text))
    span = motion_span_ids(tokenizer, codes) if len(codes) else []
    _check_specials(tokenizer, ids, [facts.bos_id] + span, "prompt")
    return ids


def motion_span_ids(tokenizer: Any, codes: Iterable[int]) -> list[int]:
    """`<Motion>` id, the motion token ids, `</Motion>` id."""
    vocab = _facts(tokenizer).vocab
    return [vocab.start_id] + [vocab.id_of(k) for k in _codes(codes, vocab.count)] + [vocab.end_id]


def block_ids(tokenizer: Any, tag: str, text: str, newline: bool = True) -> list[int]:
    """One trace block: `[tag]`, its text alone, `[/tag]`, then `\\n` (each tokenised separately)."""
    if tag not in BLOCKS:
        raise PromptError(f"unknown trace block {tag!r}; blocks are {', '.join(BLOCKS)}")
    ids = piece_ids(tokenizer, f"[{tag}]") + piece_ids(tokenizer, text) + piece_ids(tokenizer, f"[/{tag}]")
    return ids + piece_ids(tokenizer, "\n") if newline else ids


def generate_block_ids(tokenizer: Any, codes: Iterable[int]) -> list[int]:
    """A trace's motion block: `[generate]`, `<Motion>` codes `</Motion>`, `[/generate]`, `\n`."""
    return (piece_ids(tokenizer, "[generate]") + motion_span_ids(tokenizer, codes)
            + piece_ids(tokenizer, "[/generate]") + piece_ids(tokenizer, "\n"))


def interleaved_prompt_ids(tokenizer: Any, caption: str) -> list[int]:
    """Ids of the interleaved generation prompt (the model writes the trace after it)."""
    return prompt_ids(tokenizer, interleaved_user(caption, tokenizer))


def analysis_prefix_ids(tokenizer: Any, caption: str) -> list[int]:
    """Interleaved prompt + `<think>[plan]{analyse plan}[/plan]\\n[analyze]`: the model writes its analysis next."""
    return (interleaved_prompt_ids(tokenizer, caption) + piece_ids(tokenizer, THINK_OPEN)
            + block_ids(tokenizer, "plan", PLAN_ANALYZE) + piece_ids(tokenizer, "[analyze]"))


def injected_trace_ids(tokenizer: Any, caption: str, analysis: str, codes: Iterable[int], *,
                       assessment: str | None = None, refinement: str | None = None) -> list[int]:
    """An interleaved trace written up to the assessment of a given motion (section 3.1).

    Without `assessment`: ends with `[assess]`, so the model assesses the motion.
    With `assessment` and `refinement`: also writes the assess block, the refine plan and
    `[generate]<Motion>`, so the model emits the refined motion's tokens next.
    """
    analysis_clean = sanitize_user_text(analysis, tokenizer)
    ids = (interleaved_prompt_ids(tokenizer, caption) + piece_ids(tokenizer, THINK_OPEN)
           + block_ids(tokenizer, "plan", PLAN_ANALYZE) + block_ids(tokenizer, "analyze", analysis_clean)
           + block_ids(tokenizer, "plan", PLAN_GENERATE)
           + generate_block_ids(tokenizer, codes)
           + block_ids(tokenizer, "plan", PLAN_ASSESS) + piece_ids(tokenizer, "[assess]"))
    if assessment is None and refinement is None:
        return ids
    if assessment is None or refinement is None:
        raise PromptError("give both the assessment and the refinement, or neither")
    if not sanitize_user_text(refinement, tokenizer):
        raise PromptError("the refinement instruction is empty: say how the motion should change")
    return (ids + piece_ids(tokenizer, assessment_text(assessment, refinement, tokenizer))
            + piece_ids(tokenizer, "[/assess]") + piece_ids(tokenizer, "\n")
            + block_ids(tokenizer, "plan", PLAN_REFINE)
            + piece_ids(tokenizer, "[generate]") + [_facts(tokenizer).vocab.start_id])


def forced_generate_ids(tokenizer: Any, caption: str) -> list[int]:
    """Ids of the single-task generate prompt followed by `<Motion>` (the model writes codes next)."""
    return prompt_ids(tokenizer, generate_user(caption, tokenizer)) + [_facts(tokenizer).vocab.start_id]


def analyse_ids(tokenizer: Any, caption: str) -> list[int]:
    """Ids of the single-task analysis prompt (free text answer)."""
    return prompt_ids(tokenizer, analyse_user(caption, tokenizer))


def assess_ids(tokenizer: Any, caption: str, codes: Sequence[int]) -> list[int]:
    """Ids of the single-task assessment prompt (free text answer)."""
    return prompt_ids(tokenizer, assess_user(caption, codes, tokenizer), codes)


def instruction_ids(tokenizer: Any, caption: str, codes: Sequence[int]) -> list[int]:
    """Ids of the single-task refinement-instruction prompt (free text answer)."""
    return prompt_ids(tokenizer, instruction_user(caption, codes, tokenizer), codes)


def refine_ids(tokenizer: Any, caption: str, codes: Sequence[int], instruction: str) -> list[int]:
    """Ids of the instructed refinement prompt followed by `<Motion>` (forced)."""
    return (prompt_ids(tokenizer, refine_user(caption, codes, instruction, tokenizer), codes)
            + [_facts(tokenizer).vocab.start_id])


def caption_ids(tokenizer: Any, codes: Sequence[int]) -> list[int]:
    """Ids of the captioning prompt (free text answer)."""
    return prompt_ids(tokenizer, caption_user(codes), codes)
