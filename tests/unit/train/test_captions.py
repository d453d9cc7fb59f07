"""Demo-model captions: paraphrases of content x style, both orders, held-out wordings kept apart."""
from __future__ import annotations

import random

import pytest

from model_backend.train import captions as C

CONTENTS = ["walk", "run", "wave-left-hand", "raise-up-both-hands", "walk-turn-left"]
STYLES = ["normal", "tired", "happy", "elderly"]


def test_verb_forms_follow_english_rules():
    assert C.verb_forms("run") == C.Phrase("runs", "run", "running")
    assert C.verb_forms("wave the left hand") == C.Phrase("waves the left hand", "wave the left hand",
                                                          "waving the left hand")
    assert C.verb_forms("dash forward").third == "dashes forward"
    assert C.verb_forms("do a kick") == C.Phrase("does a kick", "do a kick", "doing a kick")
    assert C.verb_forms("step backwards").gerund == "stepping backwards"


def test_every_dataset_label_has_phrases_and_a_family():
    for name, entry in C.LABELS.items():
        assert len(entry.phrases) >= 3, name
        assert any(name in family for family in C.FAMILIES), name
    for name, entry in C.STYLES.items():
        assert (entry.adjective is None) == (name == "normal")


def test_captions_paraphrase_with_synonyms_and_both_style_orders():
    rng = random.Random(0)
    runs = {C.caption("run", "tired", rng) for _ in range(300)}
    assert any("jog" in c for c in runs) and any(" runs" in c for c in runs)
    assert any(c.startswith(("a man", "someone")) for c in runs)
    assert any(c.startswith(("tiredly,", "wearily,", "in a tired way,")) for c in runs)   # style, then action
    assert any(c.endswith(("tiredly", "wearily", "in a tired way")) for c in runs)        # action, then style
    assert any("tired man" in c or "tired person" in c for c in runs)                     # style as adjective
    plain = {C.caption("walk", "normal", rng) for _ in range(100)}
    assert not any("normal" in c for c in plain) and all("walk" in c or "stroll" in c for c in plain)


def test_held_out_wordings_never_appear_in_training_captions():
    train = set(C.all_captions(CONTENTS, STYLES))
    held = C.heldout_prompts(CONTENTS, STYLES, per_label=6, seed=0)
    assert set(held) == set(CONTENTS)
    for content, prompts in held.items():
        assert len(prompts) == 6 and len(set(prompts)) == 6
        for prompt in prompts:
            assert prompt not in train
            assert not any(prompt.startswith(s + " ") for s in C.TRAIN_SUBJECTS), prompt
            assert any(k in prompt.split() for k in C.keywords(content)), prompt
    assert C.heldout_prompts(CONTENTS, STYLES, seed=0) == held  # deterministic


def test_model_language_names_both_labels():
    assert C.assessment("walk", "run") == "The person walks, but should run."
    assert C.instruction("walk", "run") == "Make the person run instead of walking."
    assert C.matched_assessment("run") == "The person runs, as the goal asks."
    assert C.analysis("run", "tired").startswith("The person should run in a tired way.")
    assert C.analysis("walk", "normal").startswith("The person should walk.")


def test_unknown_labels_name_the_known_ones():
    with pytest.raises(KeyError, match="known labels are walk"):
        C.label("backflip")
    with pytest.raises(KeyError, match="known styles are normal"):
        C.style("sleepy")


def test_some_training_captions_carry_made_up_words_but_descriptions_never_do():
    rng = random.Random(0)
    known = set(" ".join(C.all_captions(["run"], ["tired"])).split())
    captions = [C.caption("run", "tired", rng) for _ in range(400)]
    noisy = [c for c in captions if set(c.split()) - known]
    assert 0.2 < len(noisy) / len(captions) < 0.4
    assert all(any(k in c.split() for k in C.keywords("run")) for c in noisy)  # the action is always kept
    assert all(set(C.describe("run", "tired", rng)[:-1].lower().split()) <= known for _ in range(100))


def test_every_verb_form_of_a_held_out_caption_is_seen_in_training():
    """Held-out frames are new sentences, not new words: the base, third-person and gerund
    forms of every phrase occur in some training caption."""
    import random as _random

    train = " ".join(C.all_captions(["run", "raise-up-left-hand"], ["normal", "tired"])).split()
    words = set(train)
    rng = _random.Random(0)
    for content in ("run", "raise-up-left-hand"):
        for _ in range(40):
            held = C.caption(content, rng.choice(["normal", "tired"]), rng, held_out=True)
            unknown = {w for w in held.split() if w not in words} - {"decides", "to", "we", "see", "for", "few",
                                                                     "seconds", "guy", "somebody", "actor",
                                                                     "character"}
            assert not unknown, (held, unknown)
    assert "putting" in words and "puting" not in words
