"""How a rig's bones follow each other's rotation, read once from the armature and evaluated in numpy.

A bone turns with its parent (unless "inherit rotation" is off) and then with the
constraints that copy a rotation: Copy Rotation and Copy Transforms (world, pose
or local space, replace mode) and Armature (deformed by a bone). Their influences
are read from the evaluated armature, so drivers count (a control rig's switches:
Rigify's IK/FK, follow and parent switches). Constraints that only move or scale a
bone are left out; the others that turn it (Damped Track, IK, ...) make the bone
"driven": its rotation keys are not in charge, so it is never keyed.

World rotations W are rotations from rest to pose in armature space, (T, 3, 3)
over frames, as in retarget.py: a bone's pose orientation is W R (R its rest
orientation). `world` finds W of any bone from the W of the keyed bones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..core import quat

# Constraints that leave a bone's rotation to its keys (they move, scale or clamp it).
KEEP_ROTATION = frozenset({"COPY_LOCATION", "COPY_SCALE", "LIMIT_LOCATION", "LIMIT_SCALE", "LIMIT_DISTANCE",
                           "LIMIT_ROTATION", "MAINTAIN_VOLUME", "TRANSFORM_CACHE"})
_COPY = frozenset({"COPY_ROTATION", "COPY_TRANSFORMS"})
_WORLD_SPACES = frozenset({"WORLD", "POSE"})


@dataclass(frozen=True)
class Link:
    """One way a bone follows another's rotation.

    kind: "world" (takes the target's pose orientation), "local" (takes the target's
    local channel), "armature" (deformed by the target, as if skinned to it)."""

    kind: str
    target: int
    influence: float


@dataclass(frozen=True)
class Follow:
    """Per bone (the rig's order): inherit rotation off, links, driven by an unmodelled
    constraint, every rotation axis locked."""

    hinge: np.ndarray                      # (B,) bool
    links: tuple[tuple[Link, ...], ...]
    driven: np.ndarray                     # (B,) bool: a constraint other than the links turns it
    locked: np.ndarray                     # (B,) bool

    @classmethod
    def plain(cls, count: int) -> "Follow":
        """No constraints, every bone inherits its parent's rotation."""
        empty = np.zeros(count, dtype=bool)
        return cls(empty, ((),) * count, empty, empty)

    def overridden(self, bone: int) -> bool:
        """True when something other than its keys sets the bone's rotation."""
        return bool(self.driven[bone]) or any(link.influence > 0 and link.kind != "armature"
                                              for link in self.links[bone])


def _link(constraint, armature: str, index: Mapping[str, int]) -> Link | None:
    """The Link a constraint makes, None when it does not copy a rotation the way Link models
    (armature: the armature object's name; targets in other objects are not followed)."""
    influence = float(constraint.influence)
    if constraint.type == "ARMATURE":
        targets = [(t.weight, t.subtarget) for t in constraint.targets
                   if getattr(t.target, "name", None) == armature and t.subtarget in index and t.weight > 0]
        if not targets:
            return None
        weight, name = max(targets)  # Rigify's parent switch: one target at weight 1
        return Link("armature", index[name], influence * min(1.0, weight))
    if constraint.type not in _COPY or getattr(getattr(constraint, "target", None), "name", None) != armature:
        return None
    if constraint.subtarget not in index or getattr(constraint, "mix_mode", "REPLACE") != "REPLACE":
        return None
    if constraint.type == "COPY_ROTATION" and not (constraint.use_x and constraint.use_y and constraint.use_z) or \
            any(getattr(constraint, f"invert_{a}", False) for a in "xyz"):
        return None
    spaces = {constraint.target_space, constraint.owner_space}
    kind = "world" if spaces <= _WORLD_SPACES else "local" if spaces == {"LOCAL"} else None
    return Link(kind, index[constraint.subtarget], influence) if kind else None


def _set_properties(armature, properties: Mapping[str, Mapping[str, float]]) -> tuple[dict, list]:
    """Set custom properties on pose bones, muting the armature's F-Curves that animate them (so the
    values stand while the rig is evaluated); the previous values and the muted F-Curves (to restore)."""
    from ..anim import compat

    anim = armature.animation_data
    action = anim.action if anim is not None else None
    before, muted = {}, []
    for bone, values in properties.items():
        pose_bone = armature.pose.bones.get(bone)
        for key, value in values.items():
            if pose_bone is None or key not in pose_bone:
                continue
            curve = compat.find_fcurve(action, f'pose.bones["{bone}"]["{key}"]') if action else None
            if curve is not None and not curve.mute and any(k.co[1] != value for k in curve.keyframe_points):
                curve.mute = True
                muted.append(curve)
            if pose_bone[key] != value:
                before[(bone, key)] = pose_bone[key]
                pose_bone[key] = type(pose_bone[key])(value)
    return before, muted


def read_follow(armature, names: Sequence[str], properties: Mapping[str, Mapping[str, float]] | None = None
                ) -> Follow:
    """Read how the bones `names` follow each other. properties: {bone: {custom property: value}}
    set while reading (e.g. a limb switched to FK), then restored."""
    import bpy  # reading only; the numpy part below needs no Blender

    bones, pose = armature.data.bones, armature.pose
    where = {b.name: i for i, b in enumerate(bones)}  # the armature's order (pose and data bones share it)
    order = np.array([where[n] for n in names])
    inherit = np.empty(len(bones), dtype=bool)
    bones.foreach_get("use_inherit_rotation", inherit)
    locks = np.empty(3 * len(bones), dtype=bool)
    pose.bones.foreach_get("lock_rotation", locks)
    hinge, locked = ~inherit[order], locks.reshape(-1, 3).all(axis=1)[order]
    index = {n: i for i, n in enumerate(names)}
    constrained = [index[b.name] for b in pose.bones if b.constraints]
    if not constrained:
        return Follow(hinge, ((),) * len(names), np.zeros(len(names), dtype=bool), locked)
    before, muted = _set_properties(armature, properties or {})
    try:
        # Blender writes the drivers' results back to the original constraints when it evaluates the
        # scene; only switches set here need an evaluation (a big rig's costs tens of milliseconds).
        evaluated = armature.evaluated_get(bpy.context.evaluated_depsgraph_get()) if before or muted else armature
        links: list[tuple[Link, ...]] = [()] * len(names)
        driven = np.zeros(len(names), dtype=bool)
        for i in constrained:
            own = []
            for constraint in evaluated.pose.bones[names[i]].constraints:
                if constraint.mute or constraint.influence <= 0 or constraint.type in KEEP_ROTATION:
                    continue
                link = _link(constraint, armature.name, index)
                if link is None:
                    driven[i] = True
                else:
                    own.append(link)
            links[i] = tuple(own)
    finally:  # restored; the next evaluation (a frame change, the keys) shows them again
        for (bone, key), value in before.items():
            pose.bones[bone][key] = value
        for curve in muted:
            curve.mute = False
    return Follow(hinge, tuple(links), driven, locked)


# ---------------------------------------------------------------- numpy evaluation

def _blend(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """Rotations (T, 3, 3) a -> b by `weight` along the shortest arc (Blender blends influences so)."""
    if weight >= 1.0:
        return b
    qa, qb = quat.quat_from_matrix(a), quat.quat_from_matrix(b)
    return quat.quat_to_matrix(quat.quat_slerp(qa, qb, weight))


class Evaluator:
    """World rotations of any bone, from those given for some (the keyed bones).

    parents, rest: the rig's (retarget.RigRest); known: {bone: (T, 3, 3)}; bones
    without an entry keep their rest pose relative to what they follow."""

    def __init__(self, parents: np.ndarray, rest: np.ndarray, follow: Follow, known: Mapping[int, np.ndarray],
                 count: int) -> None:
        self.parents, self.rest, self.follow = parents, rest, follow
        self.given = dict(known)  # as given (known grows with every bone worked out)
        self.known = dict(known)
        self.joints: dict[int, np.ndarray] = {}  # the caller's solved rotations by joint (retarget.py)
        self.eye = np.broadcast_to(np.eye(3), (count, 3, 3))

    def base(self, bone: int) -> np.ndarray:
        """The rotation a bone's keys are relative to: its parent's (identity for roots and
        bones that do not inherit rotation)."""
        p = int(self.parents[bone])
        return self.eye if p < 0 or self.follow.hinge[bone] else self.world(p)

    def world(self, bone: int) -> np.ndarray:
        """W of `bone` (T, 3, 3)."""
        found = self.known.get(bone)
        if found is not None:
            return found
        self.known[bone] = self.eye  # a guard against a cycle in the links: rest
        base = self.base(bone)
        w = base
        rest = self.rest
        for link in self.follow.links[bone]:
            t = link.target
            if link.kind == "world":  # pose orientations equal: W_b R_b = W_t R_t
                target = self.world(t) @ (rest[t] @ rest[bone].T)
            elif link.kind == "local":  # the target's local channel, under the bone's own parent
                local = np.swapaxes(self.base(t), -1, -2) @ self.world(t)
                turn = rest[bone] @ rest[t].T
                target = base @ turn @ local @ turn.T
            else:  # armature: deformed by the target bone
                target = self.world(t) @ w
            w = _blend(w, target, link.influence)
        self.known[bone] = w
        return w


def upstream(parents: np.ndarray, follow: Follow, bones) -> set[int]:
    """Every bone whose pose the given bones depend on (parents and link targets, transitively)."""
    seen: set[int] = set()
    stack = list(bones)
    while stack:
        b = stack.pop()
        for d in ([int(parents[b])] if parents[b] >= 0 else []) + [link.target for link in follow.links[b]]:
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen
