"""Bone rotations from joint positions: swing, twist and local quaternions (numpy only).

Input: joint positions (T, J, 3) in dataset axes (HumanML3D: metres, Y up,
facing +Z, the character's left is +X). Everything here stays in those axes;
convert with `skeleton.to_blender` at the Blender boundary.

Bone frames (the contract with the retargeting code)
----------------------------------------------------
Every joint j owns the bone from j to its child (the joint's rotation moves its
children); a multi-child joint aims at its most upward rest child (pelvis ->
spine1, spine3 -> neck) and a leaf continues its parent's bone (head, hands,
toes). Per frame the solver builds a full orthonormal *bone frame*

    world_frames[t, j] = [X | Y | Z]   (columns)
    Y = aim    unit direction of the bone (joint -> child),
    Z = front  unit "twist reference", perpendicular to aim,
    X = Y x Z.

`front` is defined so that it is rest-pose independent: in the rest pose it is
the character's forward direction (+Z) made perpendicular to the bone, except for
the feet (the ankle joints and their descendants, `front_up_joints`), whose front
is up (+Y), since a foot points forward. In motion it turns with the bone:
front(t) = G_j(t) front_rest, G_j the bone's world rotation.

Retargeting onto any rig (motion-math 2.3): for a target bone b mapped to joint
j, with armature-space rest matrix R_b, let B_b = [Y_b x Z_b | Y_b | Z_b] where
Y_b is b's rest direction (its local +Y) and Z_b the rig's forward (Blender -Y)
made perpendicular to Y_b (up, Blender +Z, for feet). Then b's posed
armature-space rotation is  M_b(t) = C F_j(t) B_b^T R_b  with F_j =
world_frames[t, j] and C = [[1, 0, 0], [0, 0, -1], [0, 1, 0]] the
HumanML3D-to-Blender axis matrix ((x, y, z) -> (x, -z, y)), so C F_j is the
frame in Blender axes. Its Y is the bone's aim, the bone's rest front lands on
the solved front, and the target's rest pose (T or A), bone roll and naming
drop out. Bones are solved parents first; L_b = R_b^-1 R_p M_p^-1 M_b as in
motion-math 2.3.

How each frame is determined
----------------------------
- Multi-child joints (pelvis, spine3): reflection-safe least-squares (Kabsch /
  SVD) rotation of all child directions from the rest pose.
- Hinge limbs (thigh + shin, upper arm + forearm): aim at the child; front from
  the bend plane: hinge axis n = aim_upper x aim_lower; elbows bend toward the
  front, knees toward the back. The upper bone's twist is measured as the angle
  about its aim from the parent-carried front to the bend-plane front. Where
  the limb is nearly straight (bend below 15 degrees, weight falling to zero at 5)
  that measurement is unreliable: the twist is interpolated in time between the
  confidently bent frames (a whole clip with straight limbs gets the parent's
  twist). The lower bone is then a pure hinge of the upper one. A limb bent
  the wrong way (hyperextended beyond 15 degrees, which bodies cannot do)
  reads as a half-turn of twist.
- Spine segments between the pelvis and spine3 (spine1, spine2): the twist
  between the hip line (pelvis) and the shoulder line (spine3) is spread evenly,
  1/3 and 2/3, so a turning torso bends through the whole spine.
- Feet (ankle -> toe): the parent rule (for a hinging ankle that is the
  knee-ankle-toe plane), turned toward world up while the foot is near
  horizontal (fully below 15 degrees of elevation, not at all above 60) and its
  parent-carried top is within 25 degrees of up (not at all beyond 60), so a
  planted foot stays flat whatever the leg's roll. World up alone is unstable for a
  steep foot (its vertical plane spins as the toe passes below the ankle) and
  wrong for a foot upside down (kneeling).
- Other single-child joints (neck, collars): swing from the parent (the
  shortest arc from where the parent carries the rest bone to the bone): no
  twist relative to the parent.
- Leaves (head, wrists, toes): no data, so their local rotation is the identity
  (they keep their rest pose relative to the parent).

Local rotations are G_p^-1 G_j with G_j = F_j F_rest_j^T, as quaternions made
continuous over time. The rest pose faces +Z with Y up and has straight arms
and legs (so a zero hinge angle is a straight limb): by default the T-pose of
`t_pose_offsets` with the clip's own bone lengths (`rest_offsets_for`).
`forward_kinematics` of the local rotations with the rest offsets gives back
the input joints (exactly when bone lengths are constant and the rest
geometry of the pelvis and spine3 children matches the clip's).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .quat import quat_between, quat_continuity, quat_from_matrix, quat_to_matrix
from .skeleton import HUMANML3D, Skeleton, as_joints

__all__ = [
    "SolvedMotion", "solve", "bone_directions", "forward_kinematics", "local_to_world",
    "t_pose_offsets", "rest_offsets_for", "front_reference", "front_up_joints", "rest_frames",
    "joint_rules", "JointRule", "HUMANML3D_BONE_LENGTHS",
]

_EPS = 1e-12
_UP = np.array([0.0, 1.0, 0.0])
_FORWARD = np.array([0.0, 0.0, 1.0])
# Bend angles (radians) between which a hinge's measured twist fades in.
_BEND_MIN, _BEND_FULL = np.radians(5.0), np.radians(15.0)
# Foot elevation (radians from horizontal) over which "world up" fades out.
_FOOT_FLAT, _FOOT_STEEP = np.radians(15.0), np.radians(60.0)

# HumanML3D's reference skeleton (every clip of the dataset is retargeted to it):
# bone length from each joint's parent, metres, measured on the released data.
HUMANML3D_BONE_LENGTHS = np.array([
    0.0, 0.1031, 0.1099, 0.1316, 0.3936, 0.3902, 0.1432, 0.4324, 0.4256, 0.0574, 0.1434,
    0.1494, 0.2194, 0.1375, 0.1434, 0.1030, 0.1316, 0.1230, 0.2568, 0.2631, 0.2660, 0.2699])

# T-pose bone directions (HumanML3D axes). Pelvis and spine3 children follow the
# dataset's rigid geometry; limbs are straight (a zero hinge angle is a straight
# limb); arms along +-X, legs down, feet forward and a little down.
_T_POSE_DIRECTIONS = {
    "HumanML3D": {
        "left_hip": (0.054, -0.084, -0.025), "right_hip": (-0.066, -0.084, -0.025),
        "spine1": (0.0, 1.0, 0.0), "left_knee": (0.0, -1.0, 0.0), "right_knee": (0.0, -1.0, 0.0),
        "spine2": (0.0, 1.0, 0.0), "left_ankle": (0.0, -1.0, 0.0), "right_ankle": (0.0, -1.0, 0.0),
        "spine3": (0.0, 1.0, 0.0), "left_foot": (0.0, -0.42, 0.91), "right_foot": (0.0, -0.42, 0.91),
        "neck": (0.0, 1.0, 0.0), "left_collar": (0.066, 0.120, -0.015),
        "right_collar": (-0.078, 0.120, -0.015), "head": (0.0, 0.77, 0.64),
        "left_shoulder": (1.0, 0.0, 0.0), "right_shoulder": (-1.0, 0.0, 0.0),
        "left_elbow": (1.0, 0.0, 0.0), "right_elbow": (-1.0, 0.0, 0.0),
        "left_wrist": (1.0, 0.0, 0.0), "right_wrist": (-1.0, 0.0, 0.0),
    },
}


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class SolvedMotion:
    """Solved rotations of one clip (dataset axes, see the module docstring).

    local_quats   (T, J, 4) rotation of each joint relative to its parent (w, x, y, z),
                  continuous in time; the root's is its world rotation
    world_frames  (T, J, 3, 3) bone frames, columns (X, Y = aim, Z = front)
    root_pos      (T, 3) root joint positions
    rest_offsets  (J, 3) rest offset of each joint from its parent (root: zero)
    rest_frames   (J, 3, 3) bone frames of the rest pose
    parents       parent index per joint (-1 for the root)
    """

    local_quats: np.ndarray
    world_frames: np.ndarray
    root_pos: np.ndarray
    rest_offsets: np.ndarray
    rest_frames: np.ndarray
    parents: tuple[int, ...]

    @property
    def num_frames(self) -> int:
        return int(self.local_quats.shape[0])

    def world_rotations(self) -> np.ndarray:
        """(T, J, 3, 3) rotation of each bone from the rest pose to the pose: F_j F_rest_j^T."""
        return self.world_frames @ np.swapaxes(self.rest_frames, -1, -2)

    def positions(self) -> np.ndarray:
        """Joint positions (T, J, 3) by forward kinematics of the solved rotations."""
        return forward_kinematics(self.local_quats, self.root_pos, self.rest_offsets, self.parents)


@dataclass(frozen=True)
class JointRule:
    """How one joint's frame is found: kind plus the joints it reads.

    kind: 'kabsch', 'hinge_upper', 'hinge_lower', 'spine', 'foot', 'parent', 'leaf'.
    hinge_*: `chain` = (upper joint, hinge joint, end joint), `bend` = +1 when the
    limb bends toward the front (elbows), -1 toward the back (knees).
    spine: `span` = (lower, upper) multi-child joints and `fraction` of the twist.
    """

    kind: str
    chain: tuple[int, int, int] | None = None
    bend: float = 0.0
    span: tuple[int, int] | None = None
    fraction: float = 0.0


# ---------------------------------------------------------------- small vector helpers

def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Written out: np.cross costs several times more on the small arrays used here.
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape)
    out[..., 0] = a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1]
    out[..., 1] = a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2]
    out[..., 2] = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.sqrt(_dot(v, v)), _EPS)[..., None]


def _perp_unit(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """v made perpendicular to the unit vector `axis`, normalised."""
    return _unit(v - _dot(v, axis)[..., None] * axis)


def _frame(aim: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Bone frames (..., 3, 3) with columns (aim x front, aim, front); front is orthogonalised."""
    y = _unit(aim)
    z = _perp_unit(front, y)
    out = np.empty(y.shape + (3,))
    out[..., 0] = _cross(y, z)
    out[..., 1] = y
    out[..., 2] = z
    return out


def _signed_angle(a: np.ndarray, b: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Angle from a to b about `axis` (right-handed), radians in (-pi, pi]."""
    return np.arctan2(_dot(_cross(a, b), axis), _dot(a, b))


def _turn(v: np.ndarray, axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate vectors v perpendicular to the unit `axis` by `angle` about it."""
    return v * np.cos(angle)[..., None] + _cross(axis, v) * np.sin(angle)[..., None]


def _swing(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shortest-arc rotation matrices (..., 3, 3) turning unit u onto unit v.

    R = c I + [k]x + k k^T / (1 + c), k = u x v, c = u . v (Rodrigues); within
    0.1 degree of a half-turn it goes through `quat_between`, which picks a
    stable axis for exactly opposite vectors.
    """
    k = _cross(u, v)
    c = _dot(u, v)
    far = c < -1.0 + 1e-6
    r = k[..., :, None] * (k[..., None, :] / np.where(far, 1.0, 1.0 + c)[..., None, None])
    r[..., 0, 0] += c
    r[..., 1, 1] += c
    r[..., 2, 2] += c
    r[..., 0, 1] -= k[..., 2]
    r[..., 0, 2] += k[..., 1]
    r[..., 1, 2] -= k[..., 0]
    r[..., 1, 0] += k[..., 2]
    r[..., 2, 0] -= k[..., 1]
    r[..., 2, 1] += k[..., 0]
    if np.any(far):
        r[far] = quat_to_matrix(quat_between(u[far], v[far]))
    return r


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    s = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _kabsch(rest_dirs: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Rotations (T, 3, 3) best turning rest_dirs (C, 3) onto dirs (T, C, 3), never reflections."""
    h = np.einsum("tci,cj->tij", dirs, rest_dirs)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    u = u * np.stack([np.ones_like(d), np.ones_like(d), d], axis=-1)[:, None, :]
    return u @ vt


# ---------------------------------------------------------------- skeleton facts

def _check_order(parents: tuple[int, ...] | np.ndarray) -> None:
    for j, p in enumerate(parents):
        if (j == 0) != (p < 0) or p >= j:
            raise ValueError("joints must be ordered parents first with the root at index 0 "
                             f"(joint {j} has parent {p})")


def _descendants(skeleton: Skeleton, joint: int) -> list[int]:
    out, todo = [], list(skeleton.children(joint))
    while todo:
        j = todo.pop()
        out.append(j)
        todo.extend(skeleton.children(j))
    return out


def _aim_child(skeleton: Skeleton, joint: int, rest: np.ndarray) -> int | None:
    """The child a joint's bone points at: the only child, or the most upward one."""
    kids = skeleton.children(joint)
    if not kids:
        return None
    if len(kids) == 1:
        return kids[0]
    return max(kids, key=lambda c: _unit(rest[c])[1])


def front_up_joints(skeleton: Skeleton = HUMANML3D) -> tuple[int, ...]:
    """Joints whose rest front is up (+Y) rather than forward: the ankles and their descendants."""
    out: list[int] = []
    for j, name in enumerate(skeleton.joint_names):
        if name.endswith("ankle"):
            out.extend([j, *_descendants(skeleton, j)])
    return tuple(sorted(out))


def front_reference(skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """(J, 3) reference each bone's rest front is made from: forward (+Z), up (+Y) for feet."""
    ref = np.tile(_FORWARD, (skeleton.num_joints, 1))
    ref[list(front_up_joints(skeleton))] = _UP
    return ref


@lru_cache(maxsize=8)
def joint_rules(skeleton: Skeleton = HUMANML3D) -> tuple[JointRule, ...]:
    """The rule that determines each joint's frame, from the skeleton's names and topology."""
    _check_order(skeleton.parents)
    n = skeleton.num_joints
    rules: list[JointRule | None] = [None] * n
    for j in range(n):
        kids = skeleton.children(j)
        if len(kids) > 1:
            rules[j] = JointRule("kabsch")
        elif not kids:
            rules[j] = JointRule("leaf")
    for j, name in enumerate(skeleton.joint_names):
        bend = -1.0 if name.endswith("knee") else 1.0 if name.endswith("elbow") else 0.0
        kids = skeleton.children(j)
        upper = skeleton.parents[j]
        if bend and len(kids) == 1 and upper > 0 and rules[upper] is None:
            chain = (upper, j, kids[0])
            rules[upper] = JointRule("hinge_upper", chain=chain, bend=bend)
            rules[j] = JointRule("hinge_lower", chain=chain, bend=bend)
        if name.endswith("ankle") and len(kids) == 1 and rules[j] is None:
            rules[j] = JointRule("foot")
    for lower, upper, chain in _spine_spans(skeleton):
        for k, j in enumerate(chain):
            if rules[j] is None:
                rules[j] = JointRule("spine", span=(lower, upper), fraction=(k + 1) / (len(chain) + 1))
    return tuple(r if r is not None else JointRule("parent") for r in rules)


def _spine_spans(skeleton: Skeleton) -> list[tuple[int, int, list[int]]]:
    """Single-child chains joining two multi-child joints (root to chest)."""
    spans = []
    for j in range(skeleton.num_joints):
        if len(skeleton.children(j)) < 2 or j == 0:
            continue
        chain, p = [], skeleton.parents[j]
        while p > 0 and len(skeleton.children(p)) == 1:
            chain.append(p)
            p = skeleton.parents[p]
        if p >= 0 and len(skeleton.children(p)) > 1 and chain:
            spans.append((p, j, chain[::-1]))
    return spans


# ---------------------------------------------------------------- rest pose

def t_pose_offsets(skeleton: Skeleton = HUMANML3D, bone_lengths: np.ndarray | None = None) -> np.ndarray:
    """The default T-pose rest offsets (J, 3) of a skeleton, dataset axes.

    Directions: SMPL-like T-pose (arms along +-X, legs down, limbs straight).
    Lengths: `bone_lengths` (J,) or, by default, HumanML3D's reference skeleton.
    """
    if skeleton.name not in _T_POSE_DIRECTIONS:
        raise ValueError(f"no default T-pose for {skeleton.name}: pass rest offsets (J, 3) explicitly")
    dirs = np.zeros((skeleton.num_joints, 3))
    for name, d in _T_POSE_DIRECTIONS[skeleton.name].items():
        dirs[skeleton.index(name)] = _unit(np.asarray(d, dtype=np.float64))
    lengths = HUMANML3D_BONE_LENGTHS if bone_lengths is None else np.asarray(bone_lengths, dtype=np.float64)
    if lengths.shape != (skeleton.num_joints,):
        raise ValueError(f"bone_lengths must have shape ({skeleton.num_joints},), got {lengths.shape}")
    return dirs * lengths[:, None]


def rest_offsets_for(joints: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Rest offsets (J, 3) for solving a clip: the T-pose with the clip's own bone lengths.

    Children of multi-child joints (the pelvis triangle, the chest) keep the
    clip's own geometry, turned onto the T-pose by a per-frame Kabsch fit and
    averaged, so their rotation fits exactly when that geometry is rigid.
    """
    j = as_joints(joints, skeleton)
    parents = np.asarray(skeleton.parents)
    offsets = j[:, 1:] - j[:, parents[1:]]
    lengths = np.concatenate([[0.0], np.linalg.norm(offsets, axis=-1).mean(axis=0)])
    rest = t_pose_offsets(skeleton, lengths)
    for joint in range(skeleton.num_joints):
        kids = skeleton.children(joint)
        if len(kids) < 2:
            continue
        clip = j[:, kids] - j[:, joint:joint + 1]  # (T, C, 3)
        turn = _kabsch(_unit(rest[kids]), _unit(clip))  # rest -> clip, per frame
        rest[kids] = np.einsum("tji,tcj->ci", turn, clip) / len(j)  # turn^T clip, averaged
    return rest


def rest_frames(rest_offsets: np.ndarray, skeleton: Skeleton = HUMANML3D) -> np.ndarray:
    """Bone frames (J, 3, 3) of a rest pose: aim at the aim child (leaves continue the parent's bone)."""
    rest = np.asarray(rest_offsets, dtype=np.float64)
    aims = np.zeros_like(rest)
    for j in range(skeleton.num_joints):
        child = _aim_child(skeleton, j, rest)
        aims[j] = rest[child] if child is not None else rest[j]
    ref = front_reference(skeleton)
    if np.any(np.linalg.norm(aims, axis=-1) < 1e-9):
        raise ValueError("rest pose has a zero-length bone: every bone needs a length")
    along_ref = np.abs(np.sum(_unit(aims) * ref, axis=-1)) > 0.99
    if np.any(along_ref):
        bad = [skeleton.joint_names[j] for j in np.nonzero(along_ref)[0]]
        raise ValueError(f"rest bones {bad} point along their front reference (forward, or up for feet): "
                         "use a rest pose facing +Z with Y up")
    return _frame(aims, ref)


# ---------------------------------------------------------------- kinematics

def local_to_world(local_quats: np.ndarray, parents: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """World rotation matrices (T, J, 3, 3) from local quaternions (T, J, 4)."""
    local = quat_to_matrix(local_quats)
    world = np.empty_like(local)
    for j, p in enumerate(parents):
        world[:, j] = local[:, j] if p < 0 else world[:, p] @ local[:, j]
    return world


def forward_kinematics(local_quats: np.ndarray, root_pos: np.ndarray, rest_offsets: np.ndarray,
                       parents: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Joint positions (T, J, 3) from local rotations (T, J, 4), root positions (T, 3), rest offsets (J, 3).

    A joint sits at its parent's position plus the parent's world rotation
    applied to its rest offset.
    """
    _check_order(tuple(int(p) for p in parents))
    world = local_to_world(local_quats, parents)
    offsets = np.asarray(rest_offsets, dtype=np.float64)
    pos = np.empty(world.shape[:2] + (3,))
    pos[:, 0] = root_pos
    for j, p in enumerate(parents):
        if p >= 0:
            pos[:, j] = pos[:, p] + world[:, p] @ offsets[j]
    return pos


# ---------------------------------------------------------------- solving


def _carried(world: np.ndarray, rest_frame: np.ndarray, aim: np.ndarray) -> np.ndarray:
    """World rotations (T, 3, 3) of a bone that follows the parent rotation `world`, then swings onto aim."""
    return _swing(world @ rest_frame[:, 1], aim) @ world


def _fill_twist(measured: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend a measured twist (T,) with its interpolation over the fully trusted frames."""
    sure = np.nonzero(weight >= 1.0 - 1e-9)[0]
    if len(sure) == 0:
        fill = np.zeros_like(measured)
    else:
        fill = np.interp(np.arange(len(measured)), sure, np.unwrap(measured[sure]))
    return fill + weight * _wrap(measured - fill)


def _solve_world(j: np.ndarray, skeleton: Skeleton, rest: np.ndarray, frames_rest: np.ndarray) -> np.ndarray:
    """World rotations G (T, J, 3, 3), rest pose -> pose, one rule per joint, parents first."""
    t, n = j.shape[:2]
    rules = joint_rules(skeleton)
    children = [skeleton.children(k) for k in range(n)]
    world = np.empty((t, n, 3, 3))
    done = np.zeros(n, dtype=bool)
    for joint, rule in enumerate(rules):  # multi-child joints need no parent: solve them first
        if rule.kind == "kabsch":
            kids = children[joint]
            world[:, joint] = _kabsch(_unit(rest[kids]), _unit(j[:, kids] - j[:, joint:joint + 1]))
            done[joint] = True
    for joint, rule in enumerate(rules):
        if done[joint]:
            continue
        parent = skeleton.parents[joint]
        if rule.kind == "leaf":
            world[:, joint] = world[:, parent]
            continue
        child = children[joint][0]
        aim = _unit(j[:, child] - j[:, joint])
        carried = _carried(world[:, parent], frames_rest[joint], aim)
        if rule.kind == "parent":
            world[:, joint] = carried
            continue
        base_front = carried @ frames_rest[joint, :, 2]
        front = _front(rule, j, aim, base_front, world, frames_rest, joint)
        world[:, joint] = _frame(aim, front) @ frames_rest[joint].T
    return world


def _front(rule: JointRule, j: np.ndarray, aim: np.ndarray, base_front: np.ndarray,
           world: np.ndarray, frames_rest: np.ndarray, joint: int) -> np.ndarray:
    """Front (T, 3) of a bone by its rule; base_front is the parent-carried (zero twist) front."""
    frame_rest = frames_rest[joint]
    if rule.kind == "hinge_upper":
        _, b, c = rule.chain
        lower = _unit(j[:, c] - j[:, b])
        normal = _cross(aim, lower)
        bend = np.arctan2(np.sqrt(_dot(normal, normal)), _dot(aim, lower))
        measured = rule.bend * _unit(_cross(normal, aim))
        twist = _fill_twist(_signed_angle(base_front, measured, aim), _smoothstep(bend, _BEND_MIN, _BEND_FULL))
        return _turn(base_front, aim, twist)
    if rule.kind == "hinge_lower":
        # The upper bone's X = aim x front is its hinge axis (times the bend sign), so
        # the hinge keeps front = X_upper x aim: exact for the straight rest limb.
        upper = rule.chain[0]
        front = _cross(world[:, upper] @ frames_rest[upper, :, 0], aim)
        ok = np.sqrt(_dot(front, front))[:, None] > 1e-6
        return np.where(ok, front, base_front)
    if rule.kind == "foot":
        # Parent-carried front (for a hinging ankle: the knee-ankle-toe plane), turned
        # toward world up while the foot is near horizontal so a planted foot stays
        # flat. The correction fades out for steep feet (world up spins there) and
        # for feet upside down (kneeling: the sole faces up, world up would flip it).
        up = _perp_unit(np.broadcast_to(_UP, aim.shape), aim)
        elevation = np.arcsin(np.clip(np.abs(aim[:, 1]), 0.0, 1.0))
        agree = _dot(base_front, up)
        weight = (1.0 - _smoothstep(elevation, _FOOT_FLAT, _FOOT_STEEP)) * _smoothstep(agree, 0.5, 0.9)
        return _turn(base_front, aim, weight * _signed_angle(base_front, up, aim))
    if rule.kind == "spine":
        lower, upper = rule.span
        low = _carried(world[:, lower], frame_rest, aim) @ frame_rest[:, 2]
        high = _carried(world[:, upper], frame_rest, aim) @ frame_rest[:, 2]
        return _turn(low, aim, rule.fraction * _signed_angle(low, high, aim))
    raise ValueError(f"unknown joint rule {rule.kind!r}")


def solve(joints: np.ndarray, skeleton: Skeleton = HUMANML3D, rest: np.ndarray | None = None) -> SolvedMotion:
    """Solve bone rotations for joint positions (T, J, 3), dataset axes and units.

    rest: rest offsets (J, 3) facing +Z with Y up and straight limbs; by default
    `rest_offsets_for(joints)` (the T-pose with the clip's own bone lengths).
    """
    j = as_joints(joints, skeleton)
    rest_off = rest_offsets_for(j, skeleton) if rest is None else np.asarray(rest, dtype=np.float64)
    if rest_off.shape != (skeleton.num_joints, 3):
        raise ValueError(f"rest offsets must have shape ({skeleton.num_joints}, 3), got {rest_off.shape}")
    frames_rest = rest_frames(rest_off, skeleton)
    world = _solve_world(j, skeleton, rest_off, frames_rest)
    parents = np.asarray(skeleton.parents)
    parent_world = np.concatenate([np.broadcast_to(np.eye(3), world[:, :1].shape), world[:, parents[1:]]], axis=1)
    local = np.swapaxes(parent_world, -1, -2) @ world
    quats = quat_continuity(quat_from_matrix(local), axis=0)
    return SolvedMotion(local_quats=quats, world_frames=world @ frames_rest, root_pos=j[:, 0].copy(),
                        rest_offsets=rest_off, rest_frames=frames_rest, parents=tuple(skeleton.parents))


def bone_directions(joints: np.ndarray, skeleton: Skeleton = HUMANML3D,
                    rest: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per bone and frame the aim (T, J, 3) and the twist reference `front` (T, J, 3), unit vectors.

    The two columns Y and Z of `solve(...).world_frames`; see the module docstring.
    """
    frames = solve(joints, skeleton, rest).world_frames
    return frames[..., :, 1].copy(), frames[..., :, 2].copy()
