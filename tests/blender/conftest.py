"""Blender test setup: a fresh empty scene, the default rig, the real clip in Blender axes,
and helpers handed out as fixtures (shared plain helpers live in tests/*.py, e.g. ui_recorder).

tests/conftest.py already points BLENDER_USER_RESOURCES at a temporary folder and
puts the repository on sys.path before bpy is imported.
"""
from __future__ import annotations

import bpy
import numpy as np
import pytest


@pytest.fixture()
def fresh_scene() -> bpy.types.Scene:
    """Factory settings with an empty scene (24 fps, frames 1-250), per test."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


@pytest.fixture()
def default_rig(fresh_scene) -> bpy.types.Object:
    """A new default IRG rig in the fresh scene."""
    from irg_blender_addon.rig import armature as rig
    return rig.create_default_rig(bpy.context)


@pytest.fixture(scope="session")
def clip_blender(humanml3d_dir) -> np.ndarray:
    """Clip 012314 (170 frames at 20 fps), HumanML3D joints converted to Blender axes."""
    from irg_blender_addon.core import skeleton
    return skeleton.to_blender(np.load(humanml3d_dir / "012314_joints.npy")).astype(np.float64)


def _posed_heads(armature: bpy.types.Object, frame: int) -> np.ndarray:
    """Armature-space heads (22, 3) of the joints' bones, evaluated at a scene frame."""
    from irg_blender_addon.rig import armature as rig
    bpy.context.scene.frame_set(frame)
    return np.array([armature.pose.bones[n].head for n in rig.JOINT_NAMES], dtype=np.float64)


def _bone_direction_errors(heads: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Angle (degrees) between each parent->child direction of `heads` and of `joints` (..., 21)."""
    from irg_blender_addon.rig import armature as rig
    child = np.arange(1, rig.SKELETON.num_joints)
    parent = np.array(rig.SKELETON.parents[1:])
    a, b = heads[..., child, :] - heads[..., parent, :], joints[..., child, :] - joints[..., parent, :]
    cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _rigid_motion(rest: np.ndarray, frames: int = 40, turns: float = 0.5,
                 shift=(0.5, -1.0, 0.1)) -> np.ndarray:
    """The rest joints turned about the vertical through the pelvis and translated over `frames`."""
    angle = np.linspace(0.0, 2 * np.pi * turns, frames)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.zeros((frames, 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
    pelvis = rest[0]
    moved = np.einsum("tij,kj->tki", rot, rest - pelvis) + pelvis
    return moved + np.linspace(0.0, 1.0, frames)[:, None, None] * np.asarray(shift)


@pytest.fixture(scope="session")
def posed_heads():
    """posed_heads(armature, frame) -> (22, 3) evaluated bone heads."""
    return _posed_heads


@pytest.fixture(scope="session")
def direction_errors():
    """direction_errors(heads, joints) -> (..., 21) parent->child direction errors, degrees."""
    return _bone_direction_errors


@pytest.fixture(scope="session")
def rigid_motion():
    """rigid_motion(rest, frames=40, turns=0.5, shift=...) -> (frames, 22, 3) moved rest joints."""
    return _rigid_motion
