"""The demo model's motion, through the whole chain, shows what its prompt asks for.

Seeded greedy prompts go through the add-on into Blender: backend subprocess, tokenizer,
prompt, constrained decoding, VQ-VAE decode, features -> joints, rotation solver and retarget
onto a Mixamo-named rig. The rig's evaluated world-space joints are read back and run
through the prompt's kinematic label check (model_backend.train.label_checks, independent
of the model). A regression anywhere in that chain then shows up as a wrong motion, not
only as a wrong shape. The prompts are held-out wordings the model never saw in training.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from irg_blender_addon import api
from irg_blender_addon.rig import presets
from model_backend.rig_math.skeleton import HUMANML3D, from_blender
from model_backend.train.label_checks import check
from rig_builds import build_preset_rig, world_heads
from tools.demo import DEFAULT_LABEL, DEFAULT_PROMPT

# (label, index of the wording in the model's heldout_prompts.json, mode): greedy, seed 0.
CASES = [("run", 0, "direct"), ("walk-turn-left", 1, "direct"), ("raise-up-right-hand", 0, "direct"),
         ("walk-back", 0, "interleaved"), ("wave-both-hands", 0, "interleaved"), ("bow", 1, "interleaved")]


def rig_joints(rig, action) -> tuple[np.ndarray, float]:
    """(F, 22, 3) HumanML3D-axis joint positions of the rig's deforming bones playing `action`,
    evaluated per scene frame, and the scene's fps."""
    import bpy

    scene = bpy.context.scene
    rig.animation_data.action = action
    bones = presets.load_presets()["mixamo"].bones
    start, end = (int(round(f)) for f in action.frame_range)
    heads = world_heads(rig, [bones[name] for name in HUMANML3D.joint_names], range(start, end + 1))
    return from_blender(heads), scene.render.fps / scene.render.fps_base


def generated_motion_check(demo_model, backend_python, label: str, prompt: str, mode: str):
    rig = build_preset_rig("mixamo", "Hero")
    made = api.generate(prompt, rig, model_dir=str(demo_model), backend_python=str(backend_python), mode=mode,
                        temperature=0.0, seed=0)
    assert made, f"no version for {prompt!r}"
    joints, fps = rig_joints(rig, made[-1])
    return check(label, joints, fps)


@pytest.mark.parametrize("label,index,mode", CASES)
def test_seeded_greedy_prompt_shows_its_label_on_a_user_rig(scene, demo_model, backend_python, label, index, mode):
    prompt = json.loads((demo_model / "heldout_prompts.json").read_text())[label][index]
    passes, measures = generated_motion_check(demo_model, backend_python, label, prompt, mode)
    assert passes, f"{mode} {prompt!r} does not show {label}: {measures.as_dict()}"


def test_make_demo_default_prompt_shows_its_label(scene, demo_model, backend_python):
    """What `make demo` generates with no PROMPT (interleaved, seed 0) passes its label's check."""
    passes, measures = generated_motion_check(demo_model, backend_python, DEFAULT_LABEL, DEFAULT_PROMPT,
                                              "interleaved")
    assert passes, f"make demo's {DEFAULT_PROMPT!r} does not show {DEFAULT_LABEL}: {measures.as_dict()}"
