"""Captions for the demo model: content label x style, paraphrased, with held-out wordings.

Every clip of the Bandai Namco Research Motion Dataset has a content label (`walk`,
`wave-left-hand`, ...) and a style label (`tired`, `happy`, ...). A caption is one
sentence frame filled with a subject ("a man", "someone"), one of the label's action
phrases ("jogs"/"runs") and, unless the style is `normal`, a style word placed before or
after the action ("happily, a man walks forward" / "a man walks forward happily" /
"a happy man walks forward").

Frames and subjects are split into TRAIN and HELD_OUT: held-out captions use sentence
frames and subjects the model never saw, with action words it knows (a tiny model
trained from scratch cannot know a word it never read), so they measure whether the
model reads the action out of an unfamiliar sentence.

The same module writes the model's own language about a label: the analysis of a goal,
the assessment of a motion against it and the refinement instruction, so every text
the model learns about a label comes from one table.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

__all__ = ["Label", "Style", "LABELS", "STYLES", "FAMILIES", "verb_forms", "label", "style",
           "caption", "all_captions", "heldout_prompts", "analysis", "assessment", "instruction",
           "matched_assessment", "describe", "keywords", "TRAIN_SUBJECTS", "HELD_OUT_SUBJECTS"]


# ---------------------------------------------------------------- verbs

_DOUBLE = {"run", "jog", "step", "stop", "skip", "swing", "hop", "trot", "put"}  # run -> running
_IRREGULAR_THIRD = {"do": "does", "go": "goes"}


@dataclass(frozen=True)
class Phrase:
    """One action phrase in its three forms: `walks forward`, `walk forward`, `walking forward`."""

    third: str
    base: str
    gerund: str


def verb_forms(base: str) -> Phrase:
    """The third-person and gerund forms of a base-form phrase (its first word is the verb)."""
    verb, _, rest = base.partition(" ")
    tail = f" {rest}" if rest else ""
    if verb in _IRREGULAR_THIRD:
        third = _IRREGULAR_THIRD[verb]
    elif verb.endswith(("s", "sh", "ch", "x", "z")):
        third = verb + "es"
    elif verb.endswith("y") and verb[-2:-1] not in "aeiou":
        third = verb[:-1] + "ies"
    else:
        third = verb + "s"
    if verb in _DOUBLE:
        gerund = verb + verb[-1] + "ing"
    elif verb.endswith("e") and not verb.endswith(("ee", "ye")):
        gerund = verb[:-1] + "ing"
    else:
        gerund = verb + "ing"
    return Phrase(third + tail, base, gerund + tail)


# ---------------------------------------------------------------- the label table

@dataclass(frozen=True)
class Label:
    """A content label: action phrases (the first is how the model names it) and what matters."""

    name: str
    phrases: tuple[Phrase, ...]
    aspects: str

    @property
    def main(self) -> Phrase:
        return self.phrases[0]


@dataclass(frozen=True)
class Style:
    """A style label: the adjective for a subject ("a tired man") and manner phrases ("tiredly")."""

    name: str
    adjective: str | None
    manners: tuple[str, ...]


def _label(name: str, aspects: str, *bases: str) -> Label:
    return Label(name, tuple(verb_forms(b) for b in bases), aspects)


# Phrases in base form; the first names the label in assessments and instructions.
LABELS: dict[str, Label] = {l.name: l for l in (
    _label("walk", "steady steps forward at an ordinary pace", "walk", "walk forward", "stroll forward",
           "walk ahead"),
    _label("run", "quick steps forward with both feet leaving the ground", "run", "run forward", "jog forward",
           "jog"),
    _label("dash", "a very fast sprint forward", "dash forward", "dash", "sprint forward", "sprint"),
    _label("walk-back", "steps against the facing direction", "walk backwards", "walk backward",
           "step backwards", "back up"),
    _label("walk-left", "steps diagonally forward to the left", "walk to the left",
           "walk diagonally to the left", "walk forward to the left", "step diagonally to the left"),
    _label("walk-right", "steps diagonally forward to the right", "walk to the right",
           "walk diagonally to the right", "walk forward to the right", "step diagonally to the right"),
    _label("walk-turn-left", "walking while the heading turns to the left", "turn left while walking",
           "walk in a left turn", "walk in a curve to the left", "curve to the left while walking"),
    _label("walk-turn-right", "walking while the heading turns to the right", "turn right while walking",
           "walk in a right turn", "walk in a curve to the right", "curve to the right while walking"),
    _label("bow", "bending the upper body forward and back up", "bow", "bow politely", "take a bow",
           "bow forward"),
    _label("bye", "one hand waving goodbye", "wave goodbye", "say goodbye", "wave bye",
           "say bye with a wave"),
    _label("byebye", "both hands waving goodbye", "wave goodbye with both hands", "say bye bye with both hands",
           "wave bye bye with both hands", "say goodbye with both hands"),
    _label("guide", "an arm showing the way", "guide the way", "show the way", "point the way",
           "guide someone with the arm"),
    _label("respond", "a short answering gesture", "respond", "answer with a gesture", "reply with a gesture",
           "respond with a gesture"),
    _label("call", "calling someone over", "call someone over", "call out to someone", "beckon someone",
           "call to someone"),
    _label("punch", "a fist striking forward", "punch", "punch forward", "throw a punch", "strike with a fist"),
    _label("kick", "a leg kicking forward", "kick", "kick forward", "do a kick", "kick with a leg"),
    _label("slash", "an arm swinging a blade", "slash with a sword", "swing a sword", "slash", "cut with a sword"),
    _label("dance-long", "a long dance", "dance", "dance for a while", "perform a dance", "dance along"),
    _label("dance-short", "a short dance", "dance briefly", "do a short dance", "dance a little",
           "perform a short dance"),
    _label("wave-both-hands", "both hands waving above the shoulders", "wave both hands", "wave with both hands",
           "wave both arms", "wave with both arms"),
    _label("wave-left-hand", "the left hand waving above the shoulder", "wave the left hand",
           "wave with the left hand", "wave the left arm", "wave with the left arm"),
    _label("wave-right-hand", "the right hand waving above the shoulder", "wave the right hand",
           "wave with the right hand", "wave the right arm", "wave with the right arm"),
    _label("raise-up-both-hands", "both hands lifted above the head", "raise both hands", "raise both arms",
           "lift both hands up", "put both hands up"),
    _label("raise-up-left-hand", "the left hand lifted above the head", "raise the left hand",
           "raise the left arm", "lift the left hand up", "put the left hand up"),
    _label("raise-up-right-hand", "the right hand lifted above the head", "raise the right hand",
           "raise the right arm", "lift the right hand up", "put the right hand up"),
)}

# Labels that are easy to mistake for each other: a trace's wrong first motion comes from here.
FAMILIES: tuple[frozenset[str], ...] = (
    frozenset({"walk", "run", "dash", "walk-back", "walk-left", "walk-right", "walk-turn-left",
               "walk-turn-right"}),
    frozenset({"wave-both-hands", "wave-left-hand", "wave-right-hand", "raise-up-both-hands",
               "raise-up-left-hand", "raise-up-right-hand", "bye", "byebye", "call", "respond", "guide"}),
    frozenset({"punch", "kick", "slash", "bow", "dance-long", "dance-short"}),
)

STYLES: dict[str, Style] = {s.name: s for s in (
    Style("normal", None, ()),
    Style("happy", "happy", ("happily", "cheerfully", "in a happy way")),
    Style("sad", "sad", ("sadly", "in a sad way", "gloomily")),
    Style("angry", "angry", ("angrily", "in an angry way", "furiously")),
    Style("proud", "proud", ("proudly", "in a proud way", "with pride")),
    Style("not-confident", "timid", ("timidly", "without confidence", "shyly")),
    Style("masculinity", "masculine", ("in a masculine way", "manly", "like a tough man")),
    Style("masculine", "masculine", ("in a masculine way", "manly", "like a tough man")),
    Style("feminine", "feminine", ("in a feminine way", "gracefully", "elegantly")),
    Style("childish", "childish", ("like a child", "in a childish way", "playfully")),
    Style("old", "old", ("like an old person", "in an elderly way", "stiffly")),
    Style("elderly", "elderly", ("like an old person", "in an elderly way", "stiffly")),
    Style("tired", "tired", ("tiredly", "in a tired way", "wearily")),
    Style("exhausted", "exhausted", ("wearily", "in an exhausted way", "tiredly")),
    Style("active", "energetic", ("energetically", "actively", "in an active way")),
    Style("musical", "musical", ("musically", "in a musical way", "like in a musical")),
    Style("giant", "giant", ("like a giant", "heavily", "in a giant's way")),
    Style("chimpira", "thuggish", ("like a thug", "in a thuggish way", "like a street punk")),
    Style("youthful", "youthful", ("youthfully", "in a youthful way", "like a young person")),
)}

TRAIN_SUBJECTS = ("a person", "a man", "a woman", "someone", "the person", "a human")
HELD_OUT_SUBJECTS = ("a guy", "somebody", "the actor", "a character")
_NOUNS = {"a person": "person", "a man": "man", "a woman": "woman", "the person": "person", "a human": "human",
          "a guy": "guy", "the actor": "actor", "a character": "character"}


def label(name: str) -> Label:
    """The table entry of a content label; an unknown one names the known labels."""
    try:
        return LABELS[name]
    except KeyError:
        raise KeyError(f"unknown content label {name!r}: known labels are {', '.join(LABELS)}") from None


def style(name: str) -> Style:
    """The table entry of a style label; an unknown one names the known styles."""
    try:
        return STYLES[name]
    except KeyError:
        raise KeyError(f"unknown style label {name!r}: known styles are {', '.join(STYLES)}") from None


# ---------------------------------------------------------------- sentence frames

# A frame gets (subject, phrase, manner or "", style adjective or None) and returns a caption.
Frame = Callable[[str, Phrase, str, "str | None"], str]


def _styled_subject(subject: str, adjective: str | None) -> str:
    """"a man" + "tired" -> "a tired man"; subjects without a noun ("someone") keep their form."""
    noun = _NOUNS.get(subject)
    if adjective is None or noun is None:
        return subject
    article = "an" if adjective[0] in "aeiou" else "a"
    return f"{'the' if subject.startswith('the ') else article} {adjective} {noun}"


def _after(s: str, p: Phrase, m: str, a: str | None) -> str:      # a man walks forward happily
    return f"{s} {p.third} {m}".strip()


def _before(s: str, p: Phrase, m: str, a: str | None) -> str:     # happily, a man walks forward
    return f"{m}, {s} {p.third}" if m else f"{s} {p.third}"


def _adjective(s: str, p: Phrase, m: str, a: str | None) -> str:  # a happy man walks forward
    return f"{_styled_subject(s, a)} {p.third}"


def _progressive(s: str, p: Phrase, m: str, a: str | None) -> str:  # a man is walking forward happily
    return f"{s} is {p.gerund} {m}".strip()


def _wants(s: str, p: Phrase, m: str, a: str | None) -> str:      # a tired man wants to walk forward
    return f"{_styled_subject(s, a)} wants to {p.base}"


def _seconds(s: str, p: Phrase, m: str, a: str | None) -> str:    # held out
    return f"{s} {p.third} {m} for a few seconds".replace("  ", " ")


def _we_see(s: str, p: Phrase, m: str, a: str | None) -> str:     # held out
    return f"we see {s} {p.gerund} {m}".strip()


def _decides(s: str, p: Phrase, m: str, a: str | None) -> str:    # held out
    return f"{_styled_subject(s, a)} decides to {p.base}"


# Every verb form appears in training (the base form in `_wants`): held-out frames are new
# sentences around words the model knows, not words it never read.
TRAIN_FRAMES: tuple[Frame, ...] = (_after, _before, _adjective, _progressive, _wants)
HELD_OUT_FRAMES: tuple[Frame, ...] = (_seconds, _we_see, _decides)


NOISE = 0.3  # share of training captions with made-up words, so unknown words are read as noise


def pseudo_word(rng: random.Random) -> str:
    """A made-up lower-case word (3 to 8 letters): stands for any word the model never saw."""
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))


def _noisy(text: str, rng: random.Random) -> str:
    """`text` with a made-up word for its subject's noun, or one or two made-up words around it."""
    words = text.split()
    nouns = [i for i, w in enumerate(words) if w in _NOUNS.values()]
    if nouns and rng.random() < 0.5:
        words[rng.choice(nouns)] = pseudo_word(rng)
    else:
        extra = [pseudo_word(rng) for _ in range(rng.randint(1, 2))]
        words = extra + words if rng.random() < 0.5 else words + extra
    return " ".join(words)


def caption(content: str, style_name: str, rng: random.Random, *, held_out: bool = False,
            noise: float = NOISE) -> str:
    """One random caption (lower case, no full stop) of a clip's content and style.

    Training captions (not held-out ones) carry made-up words a `noise` share of the time.
    """
    frames, subjects = (HELD_OUT_FRAMES, HELD_OUT_SUBJECTS) if held_out else (TRAIN_FRAMES, TRAIN_SUBJECTS)
    entry, look = label(content), style(style_name)
    frame = rng.choice(frames)
    phrase = rng.choice(entry.phrases)
    manner = rng.choice(look.manners) if look.manners else ""
    text = " ".join(frame(rng.choice(subjects), phrase, manner, look.adjective).split())
    return _noisy(text, rng) if not held_out and rng.random() < noise else text


def all_captions(contents: Iterable[str], styles: Iterable[str], *, held_out: bool = False) -> list[str]:
    """Every caption the frames, subjects, phrases and manners make (for the tokenizer corpus)."""
    frames, subjects = (HELD_OUT_FRAMES, HELD_OUT_SUBJECTS) if held_out else (TRAIN_FRAMES, TRAIN_SUBJECTS)
    out = []
    for content in contents:
        for style_name in styles:
            look = style(style_name)
            for frame in frames:
                for subject in subjects:
                    for phrase in label(content).phrases:
                        for manner in look.manners or ("",):
                            out.append(" ".join(frame(subject, phrase, manner, look.adjective).split()))
    return out


def heldout_prompts(contents: Iterable[str], styles: Iterable[str], per_label: int = 6,
                    seed: int = 0) -> dict[str, list[str]]:
    """label -> `per_label` distinct held-out prompts (half without a style word), deterministic."""
    rng = random.Random(seed)
    styled = [s for s in styles if style(s).manners]
    out: dict[str, list[str]] = {}
    for content in contents:
        prompts: list[str] = []
        for attempt in range(50 * per_label):
            if len(prompts) >= per_label:
                break
            look = "normal" if len(prompts) % 2 == 0 or not styled else rng.choice(styled)
            text = caption(content, look, rng, held_out=True)
            if text not in prompts:
                prompts.append(text)
        out[content] = prompts
    return out


def describe(content: str, style_name: str, rng: random.Random) -> str:
    """A caption as the model writes it for a motion (caption task): a sentence with a full stop."""
    text = caption(content, style_name, rng, noise=0.0)
    return text[0].upper() + text[1:] + "."


def keywords(content: str) -> list[str]:
    """Words of a label's phrases that say which action it is (for the out-of-vocabulary note)."""
    common = {"a", "an", "the", "with", "to", "of", "and", "for", "while", "in", "someone", "up", "do",
              "take", "say", "perform", "along", "forward", "ahead", "way", "over", "out", "hand", "hands",
              "arm", "arms", "left", "right", "both", "gesture", "little", "briefly"}
    words: list[str] = []
    for phrase in label(content).phrases:
        for form in (phrase.third, phrase.base, phrase.gerund):
            for word in form.split():
                if word not in common and word not in words:
                    words.append(word)
    return words


# ---------------------------------------------------------------- the model's own language

def _style_part(style_name: str) -> str:
    look = style(style_name)
    return f" in a {look.adjective} way" if look.adjective else ""


def analysis(content: str, style_name: str) -> str:
    """The `[analyze]` text of a goal: what the person should do and what matters."""
    entry = label(content)
    return f"The person should {entry.main.base}{_style_part(style_name)}. Key aspects: {entry.aspects}."


def assessment(actual: str, target: str) -> str:
    """The critique of a motion showing `actual` for a goal asking `target` (different labels)."""
    return f"The person {label(actual).main.third}, but should {label(target).main.base}."


def instruction(actual: str, target: str) -> str:
    """The refinement instruction from `actual` to `target`."""
    return f"Make the person {label(target).main.base} instead of {label(actual).main.gerund}."


def matched_assessment(target: str) -> str:
    """The critique of a motion that shows what the goal asks."""
    return f"The person {label(target).main.third}, as the goal asks."


def validate_labels(names: Iterable[str], table: Mapping[str, object], what: str) -> list[str]:
    """`names` as a list, or a KeyError naming the unknown ones and the known ones."""
    names = list(names)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise KeyError(f"unknown {what} label(s) {', '.join(unknown)}: known are {', '.join(table)}")
    return names
