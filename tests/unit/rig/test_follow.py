"""How bones follow each other's rotation (irg_blender_addon.follow), checked on small made-up rigs
against rotations worked out by hand: parenting, inherit rotation off, copies in world and local
space with partial influence, an Armature constraint."""
from __future__ import annotations

import numpy as np

from irg_blender_addon.rig.follow import Evaluator, Follow, Link, upstream
from model_backend.rig_math.quat import quat_from_axis_angle, quat_to_matrix

T = 3


def turn(axis, degrees) -> np.ndarray:
    """(T, 3, 3): the same rotation on every frame."""
    q = quat_from_axis_angle(np.asarray(axis, dtype=float) / np.linalg.norm(axis), np.radians(degrees))
    return np.broadcast_to(quat_to_matrix(q), (T, 3, 3)).copy()


def rig(parents, links=None, hinge=()):
    n = len(parents)
    links = links or {}
    follow = Follow(np.array([i in hinge for i in range(n)]), tuple(tuple(links.get(i, ())) for i in range(n)),
                    np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    rest = np.stack([turn([1, 2, 3], 17 * i)[0] for i in range(n)])  # every bone rolled differently
    return np.array(parents), rest, follow


def test_children_keep_their_rest_pose_under_their_parent():
    parents, rest, follow = rig([-1, 0, 1])
    a = turn([0, 0, 1], 40)
    ev = Evaluator(parents, rest, follow, {0: a}, T)
    np.testing.assert_allclose(ev.world(2), a, atol=1e-12)
    np.testing.assert_allclose(ev.base(1), a, atol=1e-12)


def test_inherit_rotation_off_ignores_the_parent():
    parents, rest, follow = rig([-1, 0, 1], hinge=(1,))
    ev = Evaluator(parents, rest, follow, {0: turn([0, 0, 1], 40)}, T)
    np.testing.assert_allclose(ev.base(1), np.broadcast_to(np.eye(3), (T, 3, 3)))
    np.testing.assert_allclose(ev.world(2), np.broadcast_to(np.eye(3), (T, 3, 3)), atol=1e-12)


def test_a_world_copy_matches_pose_orientations():
    parents, rest, follow = rig([-1, -1], {1: [Link("world", 0, 1.0)]})
    w0 = turn([1, 0, 0], 30)
    ev = Evaluator(parents, rest, follow, {0: w0}, T)
    np.testing.assert_allclose(ev.world(1) @ rest[1], w0 @ rest[0], atol=1e-12)  # W_b R_b = W_t R_t


def test_two_half_local_copies_add_up_to_the_target_turn():
    # Rigify's spine: two mechanism bones copy half of the chest control's local turn each.
    parents, rest, follow = rig([-1, 0, 0, 2, 3], {2: [Link("local", 1, 0.5)], 4: [Link("local", 1, 0.5)]})
    rest[:] = rest[1]  # the copies share the control's rest orientation
    torso, chest = turn([0, 0, 1], 25), turn([1, 0, 0], 50)
    ev = Evaluator(parents, rest, follow, {0: torso, 1: torso @ chest}, T)  # bone 3: at rest under bone 2
    np.testing.assert_allclose(ev.world(2), torso @ turn([1, 0, 0], 25), atol=1e-9)
    np.testing.assert_allclose(ev.world(4), torso @ chest, atol=1e-9)


def test_an_armature_constraint_carries_a_parentless_bone():
    parents, rest, follow = rig([-1, -1, 1], {1: [Link("armature", 0, 1.0)]})
    root = turn([0, 0, 1], 90)
    ev = Evaluator(parents, rest, follow, {0: root}, T)
    np.testing.assert_allclose(ev.world(2), root, atol=1e-12)
    assert upstream(parents, follow, [2]) == {0, 1}
