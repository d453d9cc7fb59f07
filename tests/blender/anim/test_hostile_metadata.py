"""Issue 14, finding 10: malformed `irg` metadata on one Action (an edited or hostile .blend)
must not break its armature. A malformed field reads as missing, with a warning naming the
Action; a token list longer than the backend accepts is refused before anything is sent."""
from __future__ import annotations

import logging

import bpy
import numpy as np
import pytest

from irg_blender_addon import api, props
from irg_blender_addon.anim import actions
from irg_blender_addon.rig import armature as rig

MAX_MOTION_TOKENS_IN = 250  # model_backend/wire/limits.py, docs/protocol.md#bounds


@pytest.fixture()
def version(default_rig, rigid_motion):
    walk = rigid_motion(rig.rest_joint_positions(default_rig), frames=12, turns=0.0)
    return actions.write_version(default_rig, walk, fps=20.0, prompt="a person walks", tokens=(5, 6, 7), seed=3,
                                 assessment="fine", refinement="No refinements needed.")


def _corrupt(action: bpy.types.Action, **fields) -> None:
    for key, value in fields.items():
        action[actions.NAMESPACE][key] = value


@pytest.mark.parametrize("fields", [{"serial": "first"}, {"version": "two"}, {"serial": [1, 2]}])
def test_f10_a_text_serial_or_version_does_not_block_versions(default_rig, version, rigid_motion, caplog, fields):
    _corrupt(version, **fields)
    with caplog.at_level(logging.WARNING):
        assert api.versions(default_rig) == [version]
        walk = rigid_motion(rig.rest_joint_positions(default_rig), frames=12, turns=0.0)
        newer = actions.write_version(default_rig, walk, fps=20.0, prompt="a person walks")
    assert api.versions(default_rig)[-1] == newer and newer.name == "a_person_walks.v002"
    assert any(version.name in r.getMessage() and next(iter(fields)) in r.getMessage() for r in caplog.records)


def test_f10_text_tokens_or_seed_read_as_missing_with_a_warning(version, caplog):
    _corrupt(version, tokens="five six", seed="not a number")
    with caplog.at_level(logging.WARNING):
        info = actions.version_info(version)
    assert info["tokens"] == [] and info["seed"] is None and info["prompt"] == "a person walks"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert version.name in warned and "tokens" in warned and "seed" in warned


@pytest.fixture()
def registered_props():
    props.register()
    yield props.runtime()
    props.unregister()


def test_f10_a_list_assessment_does_not_break_the_review_panel(version, registered_props):
    _corrupt(version, assessment=[1, 2, 3])
    props.review(version)  # what the Critique & refine panel shows for the playing version
    assert registered_props.review_assessment == "" and registered_props.review_action == version.name
    assert actions.version_info(version)["refinement"] == "No refinements needed."


def test_f10_a_token_list_longer_than_the_backend_takes_is_refused_before_sending(version):
    _corrupt(version, tokens=list(range(2_000_000)))
    with pytest.raises(ValueError, match=f"2000000 motion tokens.*{MAX_MOTION_TOKENS_IN}"):
        api.critique(version, backend_python="/nonexistent/python", model_dir="/nonexistent/model")
    assert np.array(version[actions.NAMESPACE]["tokens"]).size == 2_000_000  # nothing changed
