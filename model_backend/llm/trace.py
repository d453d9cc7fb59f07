"""Streaming parser for IRG-MotionLLM reasoning traces (plain Python, no torch).

Fed one token at a time (`feed(token_id, text)`), it emits events as soon as they are
known: text deltas per section, motion-code chunks, completed motions (one per
`<Motion>` codes `</Motion>` span = one round), block ends and the assessment of
each round. Motion markers and codes are recognised by id (a `MotionVocab`), text
tags (`[plan]`, `[/assess]`, `<think>`, ...) by their text, which may arrive split
over several tokens. It never raises on model output; `finish()` returns a
`TraceResult` with the motions, assessments, analysis, warnings, and a precise
`error` when no usable motion came out.

Rules for malformed traces (what an untrained or cut-off model produces):

* A motion span is a contiguous run `<Motion>` code* `</Motion>`. Any other token
  inside it (text, a second `<Motion>`) abandons the span (a failure, not a motion);
  a second `<Motion>` then opens a new span. Spans with fewer than
  `min_motion_tokens` codes (empty, one-token) are failures, never motions.
* Codes or `</Motion>` outside a span are ignored (counted in a warning).
* An opening tag inside an open block ends that block (warning); a closing tag that
  does not match ends the open block (warning); a stray closing tag is ignored.
* Text events: sections `analyze`, `plan`, `assess` carry the block text exactly;
  text outside blocks (and inside `[generate]` around the motion) is `other`, minus
  whitespace-only runs between structural elements (the newline after each block).
  `round` is the number of motion spans opened so far (0 before the first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from .prompts import BLOCKS as SECTIONS, SATISFIED, THINK_CLOSE, THINK_OPEN
from .vocab import MotionVocab

__all__ = [
    "TextDelta", "MotionChunk", "MotionSpan", "MotionFailure", "BlockEnd", "Assessment",
    "TraceEvent", "TraceResult", "TraceParser", "TextDecoder", "split_assessment", "SATISFIED",
]

_TAGS: dict[str, tuple[str, str | None]] = {THINK_OPEN: ("think", None), THINK_CLOSE: ("unthink", None)}
for _name in SECTIONS:
    _TAGS[f"[{_name}]"] = ("open", _name)
    _TAGS[f"[/{_name}]"] = ("close", _name)
# Every proper prefix of a tag: text ending in one of these may still become a tag.
_TAG_PREFIXES = frozenset(tag[:n] for tag in _TAGS for n in range(1, len(tag)))


@dataclass(frozen=True)
class TextDelta:
    """New text of a section (`analyze`, `plan`, `assess`, `other`)."""

    section: str
    delta: str
    round: int


@dataclass(frozen=True)
class MotionChunk:
    """New codebook indices of the open motion span of `round`."""

    round: int
    codes: tuple[int, ...]


@dataclass(frozen=True)
class MotionSpan:
    """A complete motion: the codes of one `<Motion>...</Motion>` span."""

    round: int
    codes: tuple[int, ...]


@dataclass(frozen=True)
class MotionFailure:
    """A span that is not a usable motion (empty, too short, abandoned, cut off)."""

    round: int
    codes: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class BlockEnd:
    """A `[section]` block ended; `closed` is False when it ended without its own closing tag."""

    section: str
    round: int
    text: str
    closed: bool


@dataclass(frozen=True)
class Assessment:
    """The `[assess]` block of a round, split; satisfied iff the refinement is `No refinements needed.`"""

    round: int
    assessment: str
    refinement: str
    satisfied: bool


TraceEvent = Union[TextDelta, MotionChunk, MotionSpan, MotionFailure, BlockEnd, Assessment]


@dataclass
class TraceResult:
    """What a whole trace held; `error` says why there is no motion when `motions` is empty."""

    motions: list[MotionSpan]
    failures: list[MotionFailure]
    assessments: list[Assessment]
    blocks: list[BlockEnd]
    section_text: dict[str, str]
    stop_reason: str
    think_closed: bool
    tokens: int
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    final_events: list[TraceEvent] = field(default_factory=list)  # what finish() itself emitted

    @property
    def analysis(self) -> str | None:
        """The text of the first `[analyze]` block (stripped), or None."""
        for block in self.blocks:
            if block.section == "analyze":
                return block.text.strip()
        return None

    @property
    def answer(self) -> MotionSpan | None:
        """The last complete motion (the model's answer), or None."""
        return self.motions[-1] if self.motions else None


def split_assessment(text: str) -> tuple[str, str, bool]:
    """`Assessment: {a}` LF `Refinement: {r}` -> (a, r, found); r is "" when the marker is absent."""
    body = text.strip()
    if body.startswith("Assessment:"):
        body = body[len("Assessment:"):]
    cut = body.find("\nRefinement:")
    if cut < 0:
        cut = body.find("Refinement:")
    if cut < 0:
        return body.strip(), "", False
    after = body[cut:].lstrip("\n")[len("Refinement:"):]
    return body[:cut].strip(), after.strip(), True


class TraceParser:
    """Incremental trace parser; see the module docstring for the rules."""

    def __init__(self, vocab: MotionVocab, min_motion_tokens: int = 2):
        self.vocab = vocab
        self.min_motion_tokens = max(1, int(min_motion_tokens))
        self.round = 0
        self.section: str | None = None      # open block, None outside blocks
        self.block_text = ""
        self.span: list[int] | None = None   # codes of the open motion span
        self.tokens = 0
        self.think_closed = False
        self.motions: list[MotionSpan] = []
        self.failures: list[MotionFailure] = []
        self.assessments: list[Assessment] = []
        self.blocks: list[BlockEnd] = []
        self.section_text: dict[str, str] = {"plan": "", "analyze": "", "assess": "", "other": ""}
        self._pending = ""        # text that may be the start of a tag
        self._held_space = ""     # whitespace of `other` not yet known to be content
        self._out: list[TraceEvent] = []
        self._warnings: list[str] = []
        self._stray_codes = 0
        self._stray_ends = 0
        self._finished: TraceResult | None = None

    # ---------------------------------------------------------------- feeding

    def feed(self, token_id: int, text: str = "") -> list[TraceEvent]:
        """One generated token: its id, and for a text token the text it added. Returns new events."""
        if self._finished is not None:
            self._warn("tokens fed after finish() were ignored")
            return []
        self.tokens += 1
        token_id = int(token_id)
        vocab = self.vocab
        if vocab.is_motion(token_id):
            self._code(vocab.code_of(token_id))
        elif token_id == vocab.start_id:
            self._flush_pending()
            if self.span is not None:
                self._fail("a new <Motion> opened before </Motion>")
            self._open_span()
        elif token_id == vocab.end_id:
            self._flush_pending()
            self._close_span()
        else:
            if self.span is not None:
                self._fail("a text token came inside the motion span")
            self._text(text)
        return self._drain()

    def feed_text(self, text: str) -> list[TraceEvent]:
        """Text with no token of its own (e.g. bytes a detokenizer released late)."""
        if self._finished is None and text:
            self._text(text)
        return self._drain()

    def finish(self, stop_reason: str = "eos") -> TraceResult:
        """End of generation: flush, close what is open (as failures / unclosed blocks), summarise."""
        if self._finished is not None:
            return self._finished
        self._flush_pending()
        self._held_space = ""
        if self.span is not None:
            self._fail(f"the motion was cut off ({stop_reason}) before </Motion>")
        if self.section is not None:
            self._warn(f"the trace ended ({stop_reason}) inside [{self.section}]")
            self._end_block(closed=False, assess=False)
        final_events = self._drain()
        if self._stray_codes:
            self._warn(f"{self._stray_codes} motion token(s) outside a <Motion> span were ignored")
        if self._stray_ends:
            self._warn(f"{self._stray_ends} </Motion> without an open span were ignored")
        for failure in self.failures:
            self._warn(f"round {failure.round}: not a usable motion ({failure.reason})")
        self._finished = TraceResult(
            motions=list(self.motions), failures=list(self.failures), assessments=list(self.assessments),
            blocks=list(self.blocks), section_text=dict(self.section_text), stop_reason=stop_reason,
            think_closed=self.think_closed, tokens=self.tokens, warnings=list(self._warnings),
            error=None if self.motions else self._no_motion_reason(stop_reason), final_events=final_events)
        return self._finished

    # ---------------------------------------------------------------- motion spans

    def _open_span(self) -> None:
        self._held_space = ""
        self.round += 1
        self.span = []

    def _code(self, code: int) -> None:
        if self.span is None:
            self._stray_codes += 1
            return
        self.span.append(code)
        self._out.append(MotionChunk(self.round, (code,)))

    def _close_span(self) -> None:
        if self.span is None:
            self._stray_ends += 1
            return
        codes = tuple(self.span)
        if len(codes) < self.min_motion_tokens:
            what = "an empty motion" if not codes else f"a {len(codes)}-token motion"
            self._fail(f"{what}; at least {self.min_motion_tokens} tokens are needed")
            return
        self.span = None
        span = MotionSpan(self.round, codes)
        self.motions.append(span)
        self._out.append(span)

    def _fail(self, reason: str) -> None:
        failure = MotionFailure(self.round, tuple(self.span or ()), reason)
        self.span = None
        self.failures.append(failure)
        self._out.append(failure)

    # ---------------------------------------------------------------- text and tags

    def _text(self, text: str) -> None:
        buf = self._pending + text
        self._pending = ""
        start = 0
        while start < len(buf):
            cut = _next_bracket(buf, start)
            if cut < 0:
                self._content(buf[start:])
                return
            self._content(buf[start:cut])
            tag = _tag_at(buf, cut)
            if tag is not None:
                self._tag(tag)
                start = cut + len(tag)
            elif buf[cut:] in _TAG_PREFIXES:
                self._pending = buf[cut:]
                return
            else:
                self._content(buf[cut])
                start = cut + 1

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._content(pending)

    def _content(self, text: str) -> None:
        if not text:
            return
        if self.section in ("plan", "analyze", "assess"):
            self.block_text += text
            self._delta(self.section, text)
            return
        if self.section == "generate":
            self.block_text += text
        # `other`: hold whitespace until real content follows it.
        text = self._held_space + text
        body = text.rstrip()
        self._held_space = text[len(body):]
        if body:
            self._delta("other", body)

    def _delta(self, section: str, text: str) -> None:
        self.section_text[section] += text
        last = self._out[-1] if self._out else None
        if isinstance(last, TextDelta) and last.section == section and last.round == self.round:
            self._out[-1] = TextDelta(section, last.delta + text, self.round)
        else:
            self._out.append(TextDelta(section, text, self.round))

    def _tag(self, tag: str) -> None:
        kind, name = _TAGS[tag]
        self._held_space = ""
        if kind == "open":
            if self.section is not None:
                self._warn(f"[{name}] opened inside [{self.section}] before [/{self.section}]")
                self._end_block(closed=False, assess=True)
            self.section, self.block_text = name, ""
        elif kind == "close":
            if self.section is None:
                self._warn(f"a stray [/{name}] outside any block was ignored")
            elif self.section == name:
                self._end_block(closed=True, assess=True)
            else:
                self._warn(f"[/{name}] closed [{self.section}]")
                self._end_block(closed=False, assess=True)
        else:
            if self.section is not None:
                self._warn(f"{tag} came inside [{self.section}] before [/{self.section}]")
                self._end_block(closed=False, assess=True)
            if kind == "unthink":
                self.think_closed = True

    def _end_block(self, closed: bool, assess: bool) -> None:
        section, text = self.section, self.block_text
        assert section is not None
        self.section, self.block_text = None, ""
        self.blocks.append(BlockEnd(section, self.round, text, closed))
        self._out.append(self.blocks[-1])
        if section == "assess" and assess:
            assessment, refinement, found = split_assessment(text)
            if not found:
                self._warn(f"round {self.round}: the assessment has no 'Refinement:' line")
            item = Assessment(self.round, assessment, refinement, refinement == SATISFIED)
            self.assessments.append(item)
            self._out.append(item)

    # ---------------------------------------------------------------- results

    def _drain(self) -> list[TraceEvent]:
        out, self._out = self._out, []
        return out

    def _warn(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)

    def _no_motion_reason(self, stop_reason: str) -> str:
        if not self.round:
            return f"the trace holds no motion: the model never opened <Motion> (stopped: {stop_reason})"
        reasons = "; ".join(f"round {f.round}: {f.reason}" for f in self.failures)
        return f"the trace holds no complete motion ({reasons})"


def _next_bracket(text: str, start: int) -> int:
    """Index of the next `[` or `<` at or after `start`, or -1."""
    hits = [i for i in (text.find("[", start), text.find("<", start)) if i >= 0]
    return min(hits) if hits else -1


def _tag_at(text: str, pos: int) -> str | None:
    for tag in _TAGS:
        if text.startswith(tag, pos):
            return tag
    return None


class TextDecoder:
    """Turns text token ids into text deltas, holding back incomplete characters.

    Decodes a short window of recent ids and releases only text that will not change
    (no trailing U+FFFD from a split multi-byte character), so the deltas concatenate
    to the decoded text whatever the tokenizer's byte or space handling.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0   # window start: decoding from here gives stable leading text
        self._read = 0     # ids up to here have been released as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one text id; return the text it released (possibly "")."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Release whatever is held back (even an incomplete character)."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return after[len(before):]
