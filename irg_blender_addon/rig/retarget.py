"""Retargeting by directions: HumanML3D joints onto any humanoid armature (motion-math 2.3).

The rig's rest data is read once (`read_rest`); `make_plan` turns it and a joint
-> bone map into everything that does not change per frame; `retarget` then
solves a whole clip at once, vectorised over frames.

For every mapped bone A of a joint j with data (j is not a leaf), the aim is from
j to k, the first joint down j's main chain that has a bone (else j's main child);
the twist reference ("front") is the solver's (model_backend.rig_math.solver) for joint j.
With S(t) = frame(p_k - p_j, front_j(t)) for the clip and B = frame(the same two
vectors on the rig's rest joints), the bone's world rotation from rest to pose is
W_A = S B^T: its rest aim lands on the clip's aim and its rest front on the
clip's front, whatever the rig's rest pose (T or A), bone roll, length or names.
The rest fronts come from solving the rig's own rest joints with the same rules,
so a clip that is the rig's rest pose moved rigidly gives exactly that rigid
motion (falling back to "forward perpendicular to the bone" when the rig's hip or
chest children are degenerate, e.g. several bones starting at one point).

Other bones: leaves (head, hands, toes) and unmapped bones keep their rest pose
relative to what they follow; bones between A and k's bone C (extra spine segments,
twist segments) and twist bones beside that span turn with A plus a share of C's
twist about the span (their fraction along it), so C's head still lands exactly.
Local channels: L_b = R_b^-1 W_p^-1 W_b R_b (R rest rotations in armature space,
turned by the object's rotation so +Z is up; W world rotations from rest to pose;
W_p what the bone's keys are relative to, as the rig makes it: its parent's
rotation through the constraints the parent follows, identity when the bone does
not inherit rotation; follow.py).

Control rigs (a preset with `controls`, e.g. Rigify): the joints are read on the
bones that show them (Rigify's ORG bones, which its DEF bones follow) and the keys
go on the controls, each turned as its joint's bone (`torso` by the mean turn of
some joints, the controls below it taking the rest); the preset's switches
(`properties`) are keyed too. A joint bone whose rotation a constraint copies in
full from another bone is keyed through that bone. Root translation:
model_backend.rig_math.rootmotion (hip-height scale, modes), a per-frame height correction
so the rig's lowest foot follows the source's where their leg lengths differ (FK legs;
`ground_correction`), then one floor offset so the rig's lowest foot point over the clip
sits at z = 0; the bone that carries it is the
pelvis's control (or the first unconnected bone above a connected one), placed so
the pelvis joint lands. IK legs (optional): the feet's IK controls at the ankles,
pinned during foot contacts (model_backend.rig_math.footlock), poles from the solved knees.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from . import follow, presets, armature as rig
from ..core import footlock, quat, rootmotion, skeleton, smoothing, solver

SKELETON = skeleton.HUMANML3D
JOINTS = SKELETON.joint_names
FOOT_JOINTS = [SKELETON.index(n) for n in ("left_ankle", "right_ankle", "left_foot", "right_foot")]
GROUND_SOFTMIN_M = 0.01   # how sharply ground_correction picks the lowest foot joint
GROUND_SMOOTH_S = 0.15    # the window ground_correction is averaged over
GROUND_LIMIT = 0.07       # of the hip height (6 cm on a 0.9 m hip): the most ground_correction moves
ROOT_MODES = rootmotion.MODES
_UP = np.array([0.0, 0.0, 1.0])
_EPS = 1e-9
# Twist bones beside a span: head within this share of the span's length from its
# axis, direction within about 25 degrees of it.
_SIDE_DISTANCE, _SIDE_COS = 0.15, 0.9
# Children of the pelvis / chest whose directions span less than this (second
# singular value) cannot define a frame: the rig's rest fronts use the convention.
_DEGENERATE = 0.2


@dataclass(frozen=True)
class RigRest:
    """An armature's rest data, bones ordered parents first, in armature space turned by the
    object's world rotation (see read_rest)."""

    name: str
    bones: tuple[str, ...]
    parents: np.ndarray      # (B,) parent index, -1 for roots
    rest: np.ndarray         # (B, 3, 3) rest rotation (Bone.matrix_local)
    heads: np.ndarray        # (B, 3)
    tails: np.ndarray        # (B, 3)
    connected: np.ndarray    # (B,) use_connect
    follow: follow.Follow    # inherit rotation, constraints that turn bones

    def index(self, name: str) -> int:
        return self._where[name]

    @cached_property
    def _where(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.bones)}


@dataclass(frozen=True)
class Share:
    """A bone that turns with span bone A plus `fraction` of the span's twist about `axis`."""

    bone: int
    span: int          # index into Plan.data_bone
    fraction: float
    axis: np.ndarray   # (3,) unit rest direction of the span


@dataclass(frozen=True)
class Plan:
    """What retargeting onto one rig with one map needs, computed once."""

    rig: RigRest
    mapping: dict[str, str]
    joint_bone: np.ndarray       # (22,) bone index per joint, -1 when unmapped
    rest_joints: np.ndarray      # (22, 3) the rig's rest joints (synthesised where unmapped)
    data_joint: np.ndarray       # (D,) joints whose bones are aimed
    data_aim: np.ndarray         # (D,) the joint each aims at
    data_bone: np.ndarray        # (D,) their bones
    rest_frames: np.ndarray      # (D, 3, 3) rest frames B (columns aim x front, aim, front)
    span_end: np.ndarray         # (D,) bone index of the aimed-at joint's bone with data, -1 if none
    shares: tuple[Share, ...]
    keyed: np.ndarray            # bones that get keys, parents first
    pelvis: int                  # the bone whose location carries the hips (the pelvis joint's control)
    root_bone: int               # -1: none
    hip_height: float
    foot_points: tuple[tuple[int, np.ndarray], ...]  # (joint, rest offset from it turned with its bone)
    rest_front_rule: str         # "solver" or "convention"
    controls: tuple[tuple[int, int], ...]  # (joint, bone keyed for it); often the joint's own bone
    control_turns: np.ndarray    # (C, 3, 3) W_control = W_joint's bone @ turn
    torso: tuple[int, tuple[int, ...]]  # a control rig's torso bone (-1: none), turned as the mean of these joints
    properties: dict[str, dict[str, float]] = None  # bone -> {custom property: value} keyed over the clip
    pins: tuple[tuple[int, int], ...] = ()   # (ankle joint, IK foot control) placed at the pinned ankle
    poles: tuple[tuple[int, int], ...] = ()  # (knee joint, IK pole control) placed in front of the solved knee

    @property
    def keyed_names(self) -> tuple[str, ...]:
        return tuple(self.rig.bones[b] for b in self.keyed)

    @cached_property
    def slot(self) -> dict[int, int]:
        """Bone index -> its position in `keyed` (the K axis of world rotations)."""
        return {int(b): k for k, b in enumerate(self.keyed)}


@dataclass(frozen=True)
class Retargeted:
    """Channels for the plan's keyed bones."""

    bone_names: tuple[str, ...]
    quaternions: np.ndarray            # (T, K, 4) w first, continuous in time
    locations: dict[str, np.ndarray]   # bone -> (T, 3) location channel
    world: np.ndarray                  # (T, K, 3, 3) world rotations from rest to pose
    heads: np.ndarray                  # (T, 3) posed head of the pelvis bone
    scale: float
    floor: float                       # height added after scaling (rig units)
    contacts: np.ndarray | None = None  # (T, 4) foot contacts the IK feet were pinned in (IK legs only)


# ---------------------------------------------------------------- reading the rig (bpy)

def _object_rotation(armature) -> np.ndarray:
    """The rotation part of the armature object's world matrix (its scale is left to the hip-height ratio)."""
    u, _, vt = np.linalg.svd(np.array(armature.matrix_world, dtype=np.float64)[:3, :3])
    if np.linalg.det(u @ vt) < 0:  # a mirrored object: keep a rotation
        u[:, -1] *= -1.0
    return u @ vt


def read_rest(armature, properties: Mapping[str, Mapping[str, float]] | None = None) -> RigRest:
    """Rest matrices, heads, tails and parents of every bone, read in bulk, and how the bones
    follow each other (follow.read_follow; properties: custom properties set while reading it,
    e.g. a control rig's IK/FK switches at FK).

    Expressed in the armature's space turned by the object's world rotation, so that
    +Z is up for rigs whose object is rotated (FBX imports: Y-up bones under a 90
    degree object rotation). The local channels do not depend on that turn."""
    bones = armature.data.bones
    n = len(bones)
    if n == 0:
        raise ValueError(f"Armature {armature.name!r} has no bones: add a humanoid skeleton or pick another armature.")
    names = [b.name for b in bones]
    parent_names = [b.parent.name if b.parent is not None else None for b in bones]
    mats = np.empty(n * 16, dtype=np.float32)
    heads = np.empty(n * 3, dtype=np.float32)
    tails = np.empty(n * 3, dtype=np.float32)
    connected = np.empty(n, dtype=bool)
    bones.foreach_get("matrix_local", mats)
    bones.foreach_get("head_local", heads)
    bones.foreach_get("tail_local", tails)
    bones.foreach_get("use_connect", connected)
    mats = np.swapaxes(mats.reshape(n, 4, 4), 1, 2)  # foreach_get gives column-major matrices
    where = {name: i for i, name in enumerate(names)}
    depth = {}
    for i, name in enumerate(names):
        d, p = 0, parent_names[i]
        while p is not None:
            d, p = d + 1, parent_names[where[p]]
        depth[name] = d
    order = sorted(range(n), key=lambda i: depth[names[i]])
    ordered = tuple(names[i] for i in order)
    position = {name: k for k, name in enumerate(ordered)}
    parents = np.array([position[parent_names[i]] if parent_names[i] is not None else -1 for i in order])
    turn = _object_rotation(armature)
    return RigRest(armature.name, ordered, parents, turn @ mats[order, :3, :3].astype(np.float64),
                   heads.reshape(n, 3)[order].astype(np.float64) @ turn.T,
                   tails.reshape(n, 3)[order].astype(np.float64) @ turn.T, connected[order],
                   follow.read_follow(armature, ordered, properties))


@dataclass(frozen=True)
class BoneMap:
    """Which bone takes each joint: the preset used ("custom" for a hand-made map) and its root bone."""

    preset: str
    mapping: dict[str, str]
    root_bone: str | None
    controls: dict[str, list[str]] = None    # joint -> control bones keyed for it (None: the joint's bone)
    torso: tuple[str, list[str]] | None = None  # a control rig's torso control and the joints it turns with
    properties: dict[str, dict[str, float]] = None  # bone -> {custom property: value} keyed over the clip
    ik_legs: dict | None = None  # the preset's IK leg controls, poles and properties (None: it has none)


# Folders of user presets searched besides the bundled ones (ui.retarget.register sets the
# user preset folder), so a preset saved in the panel is known to detection and by id.
_preset_dirs: tuple[Path, ...] = ()


def set_preset_dirs(folders: Iterable[str | os.PathLike]) -> None:
    """Search these folders for user presets too (in this order, after the bundled ones)."""
    global _preset_dirs
    _preset_dirs = tuple(Path(f) for f in folders)


def available_presets() -> presets.PresetSet:
    """The bundled presets and those in the folders given to set_preset_dirs."""
    return presets.load_presets(_preset_dirs)


def bone_map(armature, preset: str | Mapping[str, str] | presets.Preset | None = "auto") -> BoneMap:
    """The armature's joint -> bone map: detected ("auto" or None), from a preset (its id or a
    Preset; user presets included), or given as {joint: bone}. ValueError saying what is
    missing and how to fix it."""
    names = [b.name for b in armature.data.bones]
    if isinstance(preset, Mapping):
        parents = {b.name: b.parent.name if b.parent else None for b in armature.data.bones}
        mapping = {j: b for j, b in preset.items() if b}
        if not mapping:
            raise ValueError(f"Armature {armature.name!r} has no custom bone mapping: press Detect Mapping in the "
                             "IRG Motion panel (Bone Mapping) and fix it by hand, or pick a rig preset.")
        problems = presets.validate_mapping(mapping, names, parents)
        if problems:
            raise ValueError(f"Bone map for {armature.name!r} cannot be used: " + " ".join(problems)
                             + " Fix it in the IRG Motion panel (Bone Mapping), or pick a rig preset.")
        return BoneMap("custom", mapping, None)
    known = available_presets()
    if preset in (None, "auto"):
        found = presets.detect_preset(names, known)
    else:
        if isinstance(preset, str):
            if preset not in known:
                raise ValueError(f"Unknown rig preset {preset!r}: use 'auto' or one of {', '.join(sorted(known))}.")
            preset = known[preset]
        found = presets.match_preset(preset, names)
    if not found.ok:
        raise ValueError(f"Armature {armature.name!r}: cannot retarget onto it. {found.report()}".replace("\n", " "))
    return BoneMap(found.preset.id, dict(found.mapping), found.root_bone, dict(found.controls), found.torso,
                   {b: dict(v) for b, v in found.properties.items()}, found.ik_legs)


def plan_for(armature, found: BoneMap, ik_legs: bool = False) -> "Plan":
    """The retarget plan of an armature with its bone map (reads the rig once). The map's custom
    properties are kept for the bones that have them. ik_legs: key the preset's IK leg controls
    too (feet at the ankles, pinned during contacts; poles from the knees) and switch the legs to IK."""
    controls, properties, ik = dict(found.controls or {}), dict(found.properties or {}), None
    if ik_legs:
        if not found.ik_legs:
            raise ValueError(f"The rig preset {found.preset!r} has no IK leg controls: turn IK Legs off, or add "
                             "'ik_legs' to the preset.")
        properties.update(found.ik_legs["properties"])
        ik = {"controls": found.ik_legs["controls"], "poles": found.ik_legs["poles"]}
    bones = armature.pose.bones
    properties = {b: {k: v for k, v in values.items() if k in bones[b]} for b, values in properties.items()
                  if b in bones}
    properties = {b: v for b, v in properties.items() if v}
    return make_plan(read_rest(armature, properties), found.mapping, found.root_bone, controls, properties,
                     found.torso, ik)


# ---------------------------------------------------------------- small numpy helpers

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def _frame(aim: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Frames (..., 3, 3), columns (aim x front, aim, front), front made perpendicular to aim."""
    y = _unit(aim)
    z = _unit(front - np.sum(front * y, axis=-1, keepdims=True) * y)
    return np.stack([np.cross(y, z), y, z], axis=-1)


def _rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotations (T, 3, 3) by angle (T,) about one unit axis (3,) (Rodrigues)."""
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def _yaw(angle: np.ndarray) -> np.ndarray:
    return _rotation(_UP, angle)


# ---------------------------------------------------------------- the plan

def _chain_length(a: int, j: int) -> float:
    """Source reference length from joint a down to its descendant j."""
    total = 0.0
    while j != a:
        total += solver.HUMANML3D_BONE_LENGTHS[j]
        j = SKELETON.parents[j]
    return total


def _main_chain(j: int) -> list[int]:
    out, k = [], rig.main_child(j)
    while k is not None:
        out.append(k)
        k = rig.main_child(k)
    return out


def _rest_joints(r: RigRest, joint_bone: np.ndarray) -> np.ndarray:
    """The rig's rest joints (22, 3): bone heads; unmapped joints interpolated along their
    chain between mapped ones, or (chain ends) at the parent bone's tail."""
    pos = np.full((SKELETON.num_joints, 3), np.nan)
    mapped = joint_bone >= 0
    pos[mapped] = r.heads[joint_bone[mapped]]
    for j in range(SKELETON.num_joints):  # parents first
        if mapped[j]:
            continue
        a = SKELETON.parents[j]
        while a >= 0 and not mapped[a]:
            a = SKELETON.parents[a]
        if a < 0:
            raise ValueError(f"joint {JOINTS[j]} has no mapped joint above it: map the pelvis")
        below = [k for k in [j, *_main_chain(j)] if mapped[k]]
        if below:
            d = below[0]
            pos[j] = pos[a] + (pos[d] - pos[a]) * _chain_length(a, j) / _chain_length(a, d)
            continue
        p = SKELETON.parents[j]
        if mapped[p] and rig.main_child(p) == j:
            pos[j] = r.tails[joint_bone[p]]
        else:  # continue the parent's direction, at the rig's scale
            pp = SKELETON.parents[p]
            ratio = np.linalg.norm(pos[p] - pos[pp]) / solver.HUMANML3D_BONE_LENGTHS[p]
            pos[j] = pos[p] + _unit(pos[p] - pos[pp]) * solver.HUMANML3D_BONE_LENGTHS[j] * ratio
    return pos


def _degenerate(rest_joints: np.ndarray) -> bool:
    """True when the pelvis's or chest's children do not span a plane (no frame from them)."""
    for j in range(SKELETON.num_joints):
        kids = SKELETON.children(j)
        if len(kids) > 1:
            dirs = rest_joints[kids] - rest_joints[j]
            if np.any(np.linalg.norm(dirs, axis=-1) < _EPS):
                return True
            s = np.linalg.svd(_unit(dirs), compute_uv=False)
            if s[1] < _DEGENERATE:
                return True
    return False


def _convention_fronts(rest_joints: np.ndarray, aims: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Fronts by the solver's rest convention: the rig's forward (from its hip line), up for feet."""
    across = rest_joints[SKELETON.index("left_hip")] - rest_joints[SKELETON.index("right_hip")]
    forward = _unit(np.cross(across, _UP))
    feet = set(solver.front_up_joints(SKELETON))
    out = []
    for j, aim in zip(joints, _unit(aims)):
        ref, other = (_UP, forward) if j in feet else (forward, _UP)
        out.append(ref if abs(ref @ aim) < 0.95 else other)
    return np.array(out)


def _span_bones(r: RigRest, a: int, c: int) -> list[int] | None:
    """Bones strictly between bone a and its descendant c (None when c is not below a)."""
    path, b = [], r.parents[c]
    while b >= 0 and b != a:
        path.append(b)
        b = r.parents[b]
    return path[::-1] if b == a else None


def _shares(r: RigRest, mapped: set[int], data_bone: np.ndarray, span_end: np.ndarray,
            has_mapped_below: np.ndarray) -> list[Share]:
    shares = []
    for d, (a, c) in enumerate(zip(data_bone, span_end)):
        if c < 0:
            continue
        between = _span_bones(r, a, c)
        if between is None or any(b in mapped for b in between):
            continue
        span = r.heads[c] - r.heads[a]
        length = np.linalg.norm(span)
        axis = span / length
        owners = {a, *between}
        side = [b for b in range(len(r.bones))
                if r.parents[b] in owners and b not in owners and b not in mapped and not has_mapped_below[b]]
        for b in between + side:
            rel = r.heads[b] - r.heads[a]
            along = float(rel @ axis)
            if b in side:
                off_axis = np.linalg.norm(rel - along * axis)
                if off_axis > _SIDE_DISTANCE * length or abs(_unit(r.tails[b] - r.heads[b]) @ axis) < _SIDE_COS:
                    continue
            shares.append(Share(b, d, float(np.clip(along / length, 0.0, 1.0)), axis))
    return shares


REQUIRED = ("pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
            "left_shoulder", "right_shoulder", "left_elbow", "right_elbow")


def _joint_bones(r: RigRest, mapping: Mapping[str, str]) -> np.ndarray:
    """(22,) bone index per joint (-1: unmapped); ValueError for a map that cannot work."""
    unknown = sorted(set(mapping) - set(JOINTS))
    if unknown:
        raise ValueError(f"unknown joints {unknown} in the bone map; joints are {', '.join(JOINTS)}")
    missing = [b for b in mapping.values() if b not in r.bones]
    if missing:
        raise ValueError(f"Armature {r.name!r} has no bones named {', '.join(map(repr, missing))}: fix the bone map.")
    needed = [n for n in REQUIRED if n not in mapping]
    if needed:
        raise ValueError(f"Armature {r.name!r}: no bone for {', '.join(needed)}: map them (pick a preset or map "
                         "the joints by hand).")
    return np.array([r.index(mapping[n]) if n in mapping else -1 for n in JOINTS])


def _aims(joint_bone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joints whose bones are aimed, and the joint each aims at: the first mapped one down its
    main chain, else its main child."""
    data_joint, data_aim = [], []
    for j in range(SKELETON.num_joints):
        chain = _main_chain(j)
        if joint_bone[j] >= 0 and chain:
            data_joint.append(j)
            data_aim.append(next((c for c in chain if joint_bone[c] >= 0), chain[0]))
    return np.array(data_joint), np.array(data_aim)


def _check_rest_aims(r: RigRest, mapping: Mapping[str, str], joint_bone: np.ndarray, rest_joints: np.ndarray,
                     data_joint: np.ndarray, data_aim: np.ndarray) -> np.ndarray:
    """The rest aims (D, 3); ValueError for one of no length."""
    aims = rest_joints[data_aim] - rest_joints[data_joint]
    size = float(np.ptp(rest_joints, axis=0).max())
    short = np.linalg.norm(aims, axis=-1) < 1e-4 * size  # Blender keeps "zero" bones a few micrometres long
    if short.any():
        j, k = JOINTS[data_joint[short][0]], JOINTS[data_aim[short][0]]
        if joint_bone[JOINTS.index(k)] >= 0:
            what = f"the heads of bones {mapping[j]!r} ({j}) and {mapping[k]!r} ({k}) coincide"
        else:
            what = f"bone {mapping[j]!r} ({j}) has zero length and no mapped child to aim at"
        raise ValueError(f"Armature {r.name!r} has a zero-length bone in its rest pose: {what}. Give it a length in "
                         "Edit Mode, or fix the bone map.")
    return aims


def _controls(r: RigRest, joint_bone: np.ndarray, controls: Mapping[str, Iterable[str]]
              ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The bones keyed for each joint, and the turn from its joint bone's world rotation to each.

    With a preset's controls (a control rig), the joints that have them are keyed through
    them (e.g. Rigify's FK controls), turning as the joint's bone does; the others are not
    keyed. Otherwise the joint's own bone, unless a constraint copies another bone's
    rotation onto it in full: then that bone is keyed, so the constraint is kept and the
    pose still lands."""
    missing = [b for names in controls.values() for b in names if b not in r.bones]
    if missing:
        raise ValueError(f"Armature {r.name!r} has no control bones named {', '.join(map(repr, missing))}.")
    pairs, turns = [], []
    for j, b in enumerate(joint_bone):
        if b < 0:
            continue
        if controls:  # a control rig: only the joints with a control are keyed
            for name in controls.get(JOINTS[j], ()):
                pairs.append((j, r.index(name)))
                turns.append(np.eye(3))
            continue
        c = int(b)
        for _ in range(len(r.bones)):  # follow full copies to the bone they read
            links = r.follow.links[c]
            if not links or links[-1].kind != "world" or links[-1].influence < 0.999 or r.follow.driven[c]:
                break
            c = links[-1].target
        pairs.append((j, c))
        turns.append(r.rest[b] @ r.rest[c].T)  # pose orientations equal: W_c R_c = W_b R_b
    return pairs, np.array(turns).reshape(-1, 3, 3)


def _check_below(r: RigRest, controls: list[tuple[int, int]], pelvis: int) -> None:
    """ValueError unless every control follows the pelvis's control (by parenting or constraints)."""
    outside = sorted({JOINTS[j] for j, c in controls
                      if c != pelvis and pelvis not in follow.upstream(r.parents, r.follow, [c])}, key=JOINTS.index)
    if outside:
        raise ValueError(f"Armature {r.name!r}: the bones of {', '.join(outside)} are not below the hips bone "
                         f"{r.bones[pelvis]!r}: parent the legs, spine and arms under the hips, or fix the bone map.")


def _root_bone(r: RigRest, name: str | None, hips: str, keyed: set[int], above: set[int]) -> int:
    if name is None:
        return -1
    if name not in r.bones:
        raise ValueError(f"Armature {r.name!r} has no root bone {name!r}.")
    root = r.index(name)
    if root not in above or root in keyed:
        raise ValueError(f"Root bone {name!r} is not above the hips bone {hips!r}: pick the bone the whole "
                         "skeleton hangs from.")
    return root


def _foot_points(r: RigRest, joint_bone: np.ndarray, rest_joints: np.ndarray
                 ) -> tuple[tuple[int, np.ndarray], ...]:
    """(joint, offset) of the ankle and toe heads (the ankle bone's tail without toes); ValueError
    unless the hips stand above them."""
    points = []
    for ankle, toe in (("left_ankle", "left_foot"), ("right_ankle", "right_foot")):
        a, t = SKELETON.index(ankle), SKELETON.index(toe)
        points.append((a, np.zeros(3)))
        points.append((t, np.zeros(3)) if joint_bone[t] >= 0 else (a, r.tails[joint_bone[a]] - r.heads[joint_bone[a]]))
    if rest_joints[0][2] <= min((rest_joints[j] + off)[2] for j, off in points):
        raise ValueError(f"Armature {r.name!r}: the hips bone is not above the feet in the rest pose; retargeting "
                         "needs a standing rig (Z up in the world).")
    return tuple(points)


def _mover(r: RigRest, pelvis: int) -> int:
    """The bone whose location carries the hips: the hips' bone, or when it is connected to its
    parent (FBX imports connect bones that touch) the first unconnected bone above it whose
    rotation is its keys' (often the root bone)."""
    b = pelvis
    while r.connected[b] and r.parents[b] >= 0 and not r.follow.overridden(int(r.parents[b])):
        b = int(r.parents[b])
    return pelvis if r.connected[b] else b


def _keyed(r: RigRest, controls: set[int], shares: list[Share], root: int) -> list[int]:
    """Controls, share bones, the root bone, and the free bones the controls hang from or read
    (kept at rest relative to what they follow); parents first."""
    fixed = r.follow
    above = {b for b in follow.upstream(r.parents, fixed, controls)
             if not fixed.overridden(b) and not fixed.locked[b]}
    return sorted(controls | above | {s.bone for s in shares} | ({root} if root >= 0 else set()))


def make_plan(r: RigRest, mapping: Mapping[str, str], root_bone: str | None = None,
              controls: Mapping[str, Iterable[str]] | None = None,
              properties: Mapping[str, Mapping[str, float]] | None = None,
              torso: tuple[str, Iterable[str]] | None = None,
              ik: Mapping[str, Mapping[str, str]] | None = None) -> Plan:
    """Everything per rig: rest joints and frames, spans, keyed bones, hip height.

    mapping: {HumanML3D joint name: bone name} (each joint's bone has its head at
    the joint); root_bone: an unmapped bone above the pelvis bone that carries the
    ground motion in the "root_bone" mode; controls: {joint: [bones keyed instead of the
    joint's bone]} (a control rig's); properties: {bone: {custom property: value}} keyed
    over the clip (a control rig's switches); torso: (bone, joints) a control rig's body
    control, which carries the hips' place and the mean turn of the joints' bones (the
    controls below it take the rest); ik: {"controls": {ankle or toe joint: [IK controls]},
    "poles": {knee joint: IK pole}} for IK legs: keyed too, the ankles' controls placed at the
    ankles, pinned during foot contacts, the poles in front of the knees. Raises ValueError
    naming the problem."""
    joint_bone = _joint_bones(r, mapping)
    rest_joints = _rest_joints(r, joint_bone)
    data_joint, data_aim = _aims(joint_bone)
    aims = _check_rest_aims(r, mapping, joint_bone, rest_joints, data_joint, data_aim)
    degenerate = _degenerate(rest_joints)
    if not degenerate:
        try:
            fronts = solve_fronts(rest_joints[None])[0][0, data_joint]
        except ValueError:  # a rest pose the solver's T-pose fit cannot take (hips above the pelvis joint)
            degenerate = True
    if degenerate:
        fronts = _convention_fronts(rest_joints, aims, data_joint)
    data_bone = joint_bone[data_joint]
    has_data = set(data_joint.tolist())
    span_end = np.array([joint_bone[k] if joint_bone[k] >= 0 and k in has_data else -1 for k in data_aim])

    pairs, turns = _controls(r, joint_bone, controls or {})
    keyed_controls = {c for _, c in pairs}
    body = (r.index(torso[0]), tuple(JOINTS.index(j) for j in torso[1])) if torso else (-1, ())
    pelvis = body[0] if body[0] >= 0 else next((c for j, c in pairs if j == 0), int(joint_bone[0]))
    keyed_controls |= {pelvis}
    _check_below(r, pairs, pelvis)
    mapped = set(joint_bone[joint_bone >= 0].tolist())
    above = follow.upstream(r.parents, r.follow, keyed_controls)
    has_mapped_below = np.zeros(len(r.bones), dtype=bool)
    has_mapped_below[list(above)] = True
    own = {j for j, c in pairs if c == joint_bone[j]}  # twist shares only along spans keyed on their own bones
    span = np.array([e if j in own else -1 for j, e in zip(data_joint, span_end)])
    shares = [s for s in _shares(r, mapped, data_bone, span, has_mapped_below) if not r.follow.overridden(s.bone)]
    root = _root_bone(r, root_bone, r.bones[pelvis], keyed_controls, above)
    pelvis = _mover(r, pelvis)
    keyed_controls |= {pelvis}
    for b, what in ((pelvis, "hips"), (root, "root")):
        if b >= 0 and r.connected[b]:
            raise ValueError(f"The {what} bone {r.bones[b]!r} is connected to its parent, so it cannot move: "
                             "disconnect it in Edit Mode (Bone properties > Relations).")
    ik_pairs, ik_turns = _controls(r, joint_bone, ik["controls"]) if ik else ([], np.zeros((0, 3, 3)))
    pairs, turns = pairs + ik_pairs, np.concatenate([turns, ik_turns])  # IK controls float: not below the hips
    pins = tuple((j, c) for j, c in ik_pairs if JOINTS[j].endswith("_ankle"))
    poles = tuple((JOINTS.index(j), r.index(b)) for j, b in (ik or {}).get("poles", {}).items())
    keyed = _keyed(r, keyed_controls | {c for _, c in ik_pairs} | {b for _, b in poles}, shares, root)
    foot_points = _foot_points(r, joint_bone, rest_joints)
    # Measured like the source's: on the T-pose with the rig's own bone lengths (pose independent).
    hip_height = rootmotion.rest_hip_height(solver.rest_offsets_for(skeleton.from_blender(rest_joints)[None]))
    return Plan(r, dict(mapping), joint_bone, rest_joints, data_joint, data_aim, data_bone, _frame(aims, fronts),
                span_end, tuple(shares), np.array(keyed), pelvis, root, hip_height, foot_points,
                "convention" if degenerate else "solver", tuple(pairs), turns, body,
                {b: dict(v) for b, v in (properties or {}).items()}, pins, poles)


# ---------------------------------------------------------------- per clip

def check_bone_lengths(joints: np.ndarray, plan: Plan) -> None:
    """ValueError when two joints a mapped bone aims between coincide in some frame."""
    lengths = np.linalg.norm(joints[:, plan.data_aim] - joints[:, plan.data_joint], axis=-1)
    bad = lengths < 1e-6
    if bad.any():
        frames, cols = np.nonzero(bad)
        j, k = JOINTS[plan.data_joint[cols[0]]], JOINTS[plan.data_aim[cols[0]]]
        raise ValueError(f"joints {j} and {k} coincide (a zero-length bone) in frames "
                         f"{sorted(set(frames.tolist()))[:5]}: the motion is broken; regenerate it.")


def _twist(rel: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Signed angle (T,) of the twist part of rotations rel (T, 3, 3) about a unit axis."""
    q = quat.quat_from_matrix(rel)
    return 2.0 * np.arctan2(q[:, 1:] @ axis, q[:, 0])


def _solve(plan: Plan, joints: np.ndarray, fronts: np.ndarray, root_yaw: np.ndarray | None) -> follow.Evaluator:
    """The world rotations of the keyed bones (given) and of every other bone (by how it follows)."""
    r = plan.rig
    frames = _frame(joints[:, plan.data_aim] - joints[:, plan.data_joint], fronts[:, plan.data_joint])
    data_world = frames @ np.swapaxes(plan.rest_frames, -1, -2)  # S B^T
    joint_world = {int(j): data_world[:, d] for d, j in enumerate(plan.data_joint)}
    known: dict[int, np.ndarray] = {}
    for (j, c), turn in zip(plan.controls, plan.control_turns):
        if j not in joint_world:
            if c == plan.joint_bone[j]:
                continue  # a leaf on its own bone: rest relative to its parent bone
            a = SKELETON.parents[j]  # a leaf's control turns with the joint above it
            while a not in joint_world:
                a = SKELETON.parents[a]
            joint_world[j] = joint_world[a]
        known[c] = joint_world[j] @ turn
    body, joints_of_body = plan.torso
    if body >= 0:
        mean = quat.quat_from_matrix(joint_world[joints_of_body[0]])
        for k, j in enumerate(joints_of_body[1:], start=2):
            mean = quat.quat_slerp(mean, quat.quat_from_matrix(joint_world[j]), 1.0 / k)
        known[body] = quat.quat_to_matrix(mean)
    twist = {}
    for s in plan.shares:
        if s.span not in twist:
            a, c = int(plan.data_bone[s.span]), int(plan.span_end[s.span])
            twist[s.span] = _twist(np.swapaxes(known[a], -1, -2) @ known[c], s.axis)
    for s in plan.shares:
        known[s.bone] = known[int(plan.data_bone[s.span])] @ _rotation(s.axis, s.fraction * twist[s.span])
    if plan.root_bone >= 0 and root_yaw is not None:
        known[plan.root_bone] = _yaw(root_yaw)
    ev = follow.Evaluator(r.parents, r.rest, r.follow, known, len(joints))
    ev.joints = joint_world  # the joints' bones as solved (a control rig's may not show them: IK)
    return ev


def world_rotations(plan: Plan, joints: np.ndarray, fronts: np.ndarray,
                    root_yaw: np.ndarray | None = None) -> np.ndarray:
    """World rotations from rest to pose (T, K, 3, 3) of the keyed bones.

    joints, fronts: (T, 22, 3) source joints and the solver's fronts, Blender axes.
    root_yaw: (T,) the root bone's turn about +Z (the "root_bone" mode)."""
    ev = _solve(plan, joints, fronts, root_yaw)
    return np.stack([ev.world(int(b)) for b in plan.keyed], axis=1)


def _locals(plan: Plan, ev: follow.Evaluator) -> np.ndarray:
    r = plan.rig
    world = np.stack([ev.world(int(b)) for b in plan.keyed], axis=1)
    parent_world = np.stack([ev.base(int(b)) for b in plan.keyed], axis=1)
    rest = r.rest[plan.keyed]
    local = np.swapaxes(rest, -1, -2) @ np.swapaxes(parent_world, -1, -2) @ world @ rest
    return quat.quat_continuity(quat.quat_from_matrix(local), axis=0)


def local_rotations(plan: Plan, world: np.ndarray) -> np.ndarray:
    """Local channels (T, K, 4) of the keyed bones with world rotations `world` (T, K, 3, 3):
    L_b = R_b^-1 W_p^-1 W_b R_b, W_p what the bone's keys are relative to (its parent's
    rotation, as the rig's constraints make it; identity when it does not inherit rotation),
    continuous in time."""
    known = {int(b): world[:, k] for k, b in enumerate(plan.keyed)}
    return _locals(plan, follow.Evaluator(plan.rig.parents, plan.rig.rest, plan.rig.follow, known, len(world)))


def _joint_turn(plan: Plan, ev: follow.Evaluator, joint: int) -> np.ndarray:
    """W of a mapped joint's bone: as solved when it has data, else as the rig makes it."""
    found = ev.joints.get(joint)
    return found if found is not None else ev.world(int(plan.joint_bone[joint]))


def joint_positions(plan: Plan, ev: follow.Evaluator, pelvis: np.ndarray) -> np.ndarray:
    """(T, 22, 3) the rig's joints for the given pelvis joint positions (T, 3): down the joint chain,
    each rest offset turned with its parent joint's bone (as bones that follow each other rigidly do)."""
    turns = {}
    for j in range(SKELETON.num_joints):  # parents first
        b = int(plan.joint_bone[j])
        turns[j] = _joint_turn(plan, ev, j) if b >= 0 else turns[SKELETON.parents[j]]
    out = np.empty((len(pelvis), SKELETON.num_joints, 3))
    out[:, 0] = pelvis
    for j in range(1, SKELETON.num_joints):
        p = SKELETON.parents[j]
        out[:, j] = out[:, p] + turns[p] @ (plan.rest_joints[j] - plan.rest_joints[p])
    return out


def foot_heights(plan: Plan, ev: follow.Evaluator, pelvis: np.ndarray) -> np.ndarray:
    """(T, P) heights of the rig's foot points for the given pelvis joint positions (T, 3)."""
    joints = joint_positions(plan, ev, pelvis)
    out = []
    for joint, offset in plan.foot_points:
        out.append(joints[:, joint, 2] + (_joint_turn(plan, ev, joint) @ offset)[:, 2])
    return np.stack(out, axis=1)


def ground_correction(plan: Plan, ev: follow.Evaluator, pelvis: np.ndarray, joints: np.ndarray,
                      scale: float, fps: float) -> np.ndarray:
    """(T,) heights to add to the pelvis so the rig's lowest foot joint follows the source's (scaled).

    Retargeting by directions keeps the rig's own leg lengths, so where a generated motion's
    legs are longer or shorter than its rest the rig's feet float or sink by the difference (up to
    5 cm on the demo model's walks, under 1 cm on captured motion); this takes the difference out
    frame by frame. The lowest joint is a softmin over ankles and toes, so the correction stays
    continuous when the other foot becomes the lower one, and it is averaged over GROUND_SMOOTH_S
    (3 frames at 20 fps): the feet then stay within about 1 cm of the source's and the pelvis
    gains no jitter (unsmoothed, feet within 0.5 cm but twice the pelvis's vertical acceleration)."""
    rig = joint_positions(plan, ev, pelvis)[:, FOOT_JOINTS, 2]
    source = joints[:, FOOT_JOINTS, 2] * scale
    weights = np.exp(-(source - source.min(axis=1, keepdims=True)) / GROUND_SOFTMIN_M)
    correction = -((rig - source) * weights).sum(axis=1) / weights.sum(axis=1)
    # A gap past GROUND_LIMIT of the hip height is a broken motion, not a leg length: not chased.
    limit = GROUND_LIMIT * plan.hip_height
    middle = float(np.median(correction))
    correction = np.clip(correction, middle - limit, middle + limit)
    return smoothing.savgol(correction, window=int(round(GROUND_SMOOTH_S * fps)) | 1, order=1)


def _ik_legs(plan: Plan, ev: follow.Evaluator, joints: np.ndarray, anchors: Mapping[int, np.ndarray], fps: float,
             scale: float, contacts: np.ndarray | None
             ) -> tuple[follow.Evaluator, dict[str, np.ndarray], np.ndarray]:
    """IK legs: the feet pinned during foot contacts (model_backend.footlock on the rig's joints,
    judged in metres), each IK foot at its pinned ankle and turned onto its pinned toe, the poles in
    front of the solved knees (turned with the thighs). The evaluator with the feet turned, the
    locations of the feet and poles, and the pinned frames (T, 4)."""
    r = plan.rig
    metres = skeleton.from_blender(joints / scale)
    flags = footlock.pinned_frames(footlock.detect_contacts(metres, contacts=contacts, fps=fps))
    pinned = skeleton.to_blender(footlock.lock_feet(metres, contacts=contacts, fps=fps)) * scale
    known = dict(ev.given)
    for j, c in plan.controls:
        leg = next((a for a, _ in plan.pins if j in (a, SKELETON.children(a)[0])), None)
        if leg is not None and c in known:  # the foot's turn from its solved aim onto its pinned aim
            toe = SKELETON.children(leg)[0]
            swing = quat.quat_to_matrix(quat.quat_between(joints[:, toe] - joints[:, leg],
                                                          pinned[:, toe] - pinned[:, leg]))
            known[c] = swing @ known[c]
    turned = follow.Evaluator(r.parents, r.rest, r.follow, known, len(joints))
    turned.joints = ev.joints
    heads = {}
    for ankle, foot in plan.pins:
        turn, column = turned.world(foot), SKELETON.foot_joints.index(ankle)  # L/R ankle, then its toe
        reach = turn @ (plan.rest_joints[SKELETON.children(ankle)[0]] - plan.rest_joints[ankle])
        at = _pivot_on_toe(pinned[:, ankle], reach, flags[:, column], flags[:, column + 1])
        heads[foot] = at + turn @ (r.heads[foot] - plan.rest_joints[ankle])
    for knee, pole in plan.poles:
        thigh = _joint_turn(plan, turned, SKELETON.parents[knee])
        heads[pole] = joints[:, knee] + thigh @ (r.heads[pole] - plan.rest_joints[knee])
    out = {}
    for bone, head in heads.items():
        parent = int(r.parents[bone])
        parent_head = _posed_head(plan, turned, parent, anchors) if parent >= 0 else None
        out[r.bones[bone]] = _location(r, turned, bone, head, parent_head)
    return turned, out, flags


def _pivot_on_toe(ankle: np.ndarray, reach: np.ndarray, ankle_pinned: np.ndarray, toe_pinned: np.ndarray
                  ) -> np.ndarray:
    """Ankle targets (T, 3) that keep the rig's toe (ankle + reach, reach in the rig's own foot
    length) still through each toe contact: where the toe is pinned and the ankle is not (the
    heel lifting, or a run on the toes), the foot pivots on the toe's place in that contact."""
    out = ankle.copy()
    for start, stop in footlock.contact_runs(toe_pinned):
        frames = np.arange(start, stop)
        free = frames[~ankle_pinned[frames]]
        if len(free):
            both = frames[ankle_pinned[frames]]
            held = both if len(both) else frames
            out[free] = (ankle[held] + reach[held]).mean(axis=0) - reach[free]
    return out


def _control_head(plan: Plan, ev: follow.Evaluator, pelvis: np.ndarray) -> np.ndarray:
    """(T, 3) head of the bone keyed for the hips that puts the pelvis joint's bone at `pelvis`:
    back up the bone chain between them when the control is above it, else turned rigidly."""
    r = plan.rig
    bone, control = int(plan.joint_bone[0]), plan.pelvis
    head, b = pelvis, bone
    while b >= 0 and b != control:
        p = int(r.parents[b])
        if p >= 0:
            head = head - ev.world(p) @ (r.heads[b] - r.heads[p])
        b = p
    if b == control:
        return head
    return pelvis + ev.world(control) @ (r.heads[control] - plan.rest_joints[0])


def _position_parent(r: RigRest, bone: int) -> int:
    """The bone a bone moves with: its parent, else the bone an Armature constraint binds it to."""
    if r.parents[bone] >= 0:
        return int(r.parents[bone])
    return next((link.target for link in r.follow.links[bone] if link.kind == "armature"), -1)


def _location(r: RigRest, ev: follow.Evaluator, bone: int, head: np.ndarray, parent_head: np.ndarray | None
              ) -> np.ndarray:
    """The location channel (T, 3) putting bone's head at `head` under its posed parent."""
    p = int(r.parents[bone])
    rest = r.rest[bone]
    if p < 0:
        return (head - r.heads[bone]) @ rest
    wp = ev.base(bone)
    local = np.einsum("tji,tj->ti", wp, head - parent_head) - (r.heads[bone] - r.heads[p])
    return local @ rest


def _posed_head(plan: Plan, ev: follow.Evaluator, bone: int, anchors: Mapping[int, np.ndarray]) -> np.ndarray:
    """(T, 3) posed head of a bone: from the nearest bone above it (by parent, or the bone an
    Armature constraint binds it to) whose posed head is known (`anchors`: bone -> (T, 3), the bones
    whose locations are keyed), down the chain; at rest when none is above it."""
    r = plan.rig
    path, b = [], bone
    while b >= 0 and b not in anchors:
        path.append(b)
        b = _position_parent(r, b)
    if b < 0:
        return np.broadcast_to(r.heads[bone], (len(ev.eye), 3))
    head = anchors[b]
    for child in reversed(path):
        head = head + ev.world(b) @ (r.heads[child] - r.heads[b])
        b = child
    return head


def solve_fronts(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The solver's fronts (T, 22, 3) for Blender-axis joints, and its rest offsets (dataset axes)."""
    hml = skeleton.from_blender(joints)
    rest = solver.rest_offsets_for(hml, SKELETON)
    frames = solver.solve(hml, SKELETON, rest=rest).world_frames
    return skeleton.to_blender(frames[..., :, 2]), rest


def retarget(plan: Plan, joints: np.ndarray, *, fps: float, root_mode: str = "root_motion",
             scale: float | None = None, contacts: np.ndarray | None = None) -> Retargeted:
    """Channels of the keyed bones for source joints (T, 22, 3; Blender axes, metres, at `fps`).

    root_mode: "root_motion" (the hips travel), "in_place" (the ground trajectory is
    removed) or "root_bone" (a separate root bone carries it and the facing). scale:
    root translation scale; None: rig hip height / source hip height. contacts: the (T, 4)
    contact channels at `fps`, for the feet of IK legs (plans made with IK legs)."""
    if root_mode not in ROOT_MODES:
        raise ValueError(f"unknown root mode {root_mode!r}: use one of {', '.join(ROOT_MODES)}")
    if root_mode == "root_bone" and plan.root_bone < 0:
        raise ValueError(f"Armature {plan.rig.name!r} has no root bone above its hips bone: use the root "
                         "motion or in place mode, or add a root bone (parent of the hips) and pick a preset "
                         "that names it.")
    if root_mode == "root_bone" and plan.pelvis == plan.root_bone:
        raise ValueError(f"Armature {plan.rig.name!r}: the hips bone is connected to the root bone, so the root "
                         "bone cannot carry the ground path apart from the hips: use the root motion or in place "
                         "mode, or disconnect the hips bone in Edit Mode.")
    check_bone_lengths(joints, plan)
    fronts, rest_offsets = solve_fronts(joints)
    source_height = rootmotion.rest_hip_height(rest_offsets, SKELETON)
    target_height = plan.hip_height if scale is None else float(scale) * source_height
    motion = rootmotion.root_motion(skeleton.from_blender(joints), SKELETON, mode=root_mode,
                                    target_hip_height=target_height, source_hip_height=source_height, fps=fps)
    yaw = motion.root_yaw if root_mode == "root_bone" else None
    ev = _solve(plan, joints, fronts, yaw)
    pelvis = skeleton.to_blender(motion.world_hips())
    if not plan.pins:  # IK legs put planted feet at the floor themselves; a moving pelvis would cost them reach
        pelvis[:, 2] += ground_correction(plan, ev, pelvis, joints, float(motion.scale), fps)
    drop = -float(foot_heights(plan, ev, pelvis).min())  # the rig's own lowest foot point onto z = 0
    pelvis[:, 2] += drop
    r = plan.rig
    anchors: dict[int, np.ndarray] = {}  # bones whose location is keyed -> their posed heads
    locations = {}
    if plan.root_bone >= 0:
        root_head = np.broadcast_to(r.heads[plan.root_bone], pelvis.shape).copy()
        if root_mode == "root_bone":
            root_head[:, :2] = skeleton.to_blender(motion.root)[:, :2]
        parent = int(r.parents[plan.root_bone])
        parent_head = _posed_head(plan, ev, parent, {}) if parent >= 0 else None
        locations[r.bones[plan.root_bone]] = _location(r, ev, plan.root_bone, root_head, parent_head)
        anchors[plan.root_bone] = root_head
    parent = int(r.parents[plan.pelvis])
    parent_head = _posed_head(plan, ev, parent, anchors) if parent >= 0 else None
    anchors[plan.pelvis] = _control_head(plan, ev, pelvis)
    locations[r.bones[plan.pelvis]] = _location(r, ev, plan.pelvis, anchors[plan.pelvis], parent_head)
    flags = None
    if plan.pins or plan.poles:
        ev, legs, flags = _ik_legs(plan, ev, joint_positions(plan, ev, pelvis), anchors, fps, float(motion.scale),
                                   contacts)
        locations.update(legs)
    world = np.stack([ev.world(int(b)) for b in plan.keyed], axis=1)
    return Retargeted(plan.keyed_names, _locals(plan, ev), locations, world, pelvis,
                      float(motion.scale), float(motion.floor + drop), flags)
