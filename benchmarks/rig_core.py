"""Rig core benchmark (numpy only): rotation solving speed and quality against two baselines.

Solvers, all given the same 196-frame HumanML3D clip and the same rest pose (the
T-pose with the clip's own bone lengths), so errors measure rotations, not
skeleton proportions:
  - ours: `model_backend.rig_math.solver.solve` (swing + twist from bend planes, Kabsch at
    pelvis and spine3, continuity);
  - iterative IK, 10 and 100 sweeps: the MoMask `joints2bvh` idea, written here:
    start from the rest pose and, parents first, turn each joint so its bones
    point toward their targets (the average of the children's shortest arcs);
  - swing-only analytic: shortest arc per bone from the parent-carried rest
    direction, Kabsch at multi-child joints, no twist (the MotionGPT "HybrIK" idea).
Quality: mean / max bone-direction error (degrees) and mean joint position error
(mm) by FK of the solved rotations; twist jitter (degrees per frame about each
bone's own axis, mean over bones); and, on synthetic motion with known rotations
(random plausible swing + twist, hinged knees and elbows), the error of the
hip and shoulder rotations where the limb is bent (>= 15 degrees): that is twist.
Then the rest of the numpy chain on the same clip (rest pose, foot locking, root
channels, BVH export) with foot-skating and jerk before and after locking.
Times are the best of several runs on one thread. Usage:
    python benchmarks/rig_core.py [--data ../shared/data/humanml3d] [--frames 196]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from timing import best_time  # noqa: E402

from model_backend.rig_math.metrics import bone_direction_error_deg, position_error_mm, twist_jitter  # noqa: E402
from model_backend.rig_math.quat import (quat_angle, quat_between, quat_continuity, quat_from_axis_angle,
                                         quat_from_matrix, quat_mul, quat_to_matrix)
from model_backend.rig_math.skeleton import HUMANML3D as S  # noqa: E402
from model_backend.rig_math.solver import (forward_kinematics, joint_rules, local_to_world, rest_frames,
                                           rest_offsets_for, solve, t_pose_offsets)


# ---------------------------------------------------------------- baselines

def _kabsch(rest_dirs: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(np.einsum("tci,cj->tij", dirs, rest_dirs))
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]
    return u @ vt


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def swing_only(joints: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Local quaternions (T, J, 4): Kabsch at multi-child joints, shortest arc elsewhere, leaves identity."""
    t, n = joints.shape[:2]
    world = np.empty((t, n, 3, 3))
    for j in range(n):
        kids = S.children(j)
        parent = np.eye(3) if S.parents[j] < 0 else world[:, S.parents[j]]
        if len(kids) > 1:
            world[:, j] = _kabsch(_unit(rest[kids]), _unit(joints[:, kids] - joints[:, j:j + 1]))
        elif kids:
            carried = parent @ rest[kids[0]]
            world[:, j] = quat_to_matrix(quat_between(carried, joints[:, kids[0]] - joints[:, j])) @ parent
        else:
            world[:, j] = parent
    return _locals(world)


def iterative_ik(joints: np.ndarray, rest: np.ndarray, sweeps: int) -> np.ndarray:
    """Local quaternions (T, J, 4) by repeated parents-first sweeps turning each joint toward its targets."""
    t, n = joints.shape[:2]
    local = np.broadcast_to(np.eye(3), (t, n, 3, 3)).copy()
    targets = {j: _unit(joints[:, S.children(j)] - joints[:, j:j + 1]) for j in range(n) if S.children(j)}
    for _ in range(sweeps):
        world = np.empty_like(local)
        for j in range(n):
            p = S.parents[j]
            world[:, j] = local[:, j] if p < 0 else world[:, p] @ local[:, j]
            if j not in targets:
                continue
            kids = S.children(j)
            current = np.einsum("tij,cj->tci", world[:, j], rest[kids])
            arcs = quat_between(current, targets[j])  # (T, C, 4), w >= 0: average directly
            delta = quat_to_matrix(np.sum(arcs, axis=1))
            world[:, j] = delta @ world[:, j]
            local[:, j] = world[:, j] if p < 0 else np.swapaxes(world[:, p], -1, -2) @ world[:, j]
    return quat_continuity(quat_from_matrix(local))


def _locals(world: np.ndarray) -> np.ndarray:
    par = np.asarray(S.parents)
    parent = np.concatenate([np.broadcast_to(np.eye(3), world[:, :1].shape), world[:, par[1:]]], axis=1)
    return quat_continuity(quat_from_matrix(np.swapaxes(parent, -1, -2) @ world))


def _frames_from_locals(quats: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Bone frames (T, J, 3, 3) of any solver, for the twist-jitter measure: world rotation times rest frame."""
    return local_to_world(quats, S.parents) @ rest_frames(rest, S)


# ---------------------------------------------------------------- synthetic ground truth

def _smooth(rng: np.random.Generator, frames: int, n: int, amp: float) -> np.ndarray:
    t = np.arange(frames)[:, None, None] / S.fps
    f, ph, a = rng.uniform(0.1, 0.8, (1, n, 3)), rng.uniform(0, 2 * np.pi, (1, n, 3)), rng.uniform(0.3, 1, (1, n, 3))
    return amp * (a * np.sin(2 * np.pi * f * t + ph)).sum(-1) / a.sum(-1)


def synthetic(seed: int, frames: int):
    """Random plausible rotations on the T-pose: ball joints with twist, hinged knees and elbows.

    Returns (local quats, joints, hinge angle per hinge joint, rest offsets).
    """
    rng = np.random.default_rng(seed)
    rest = t_pose_offsets(S)
    fr = rest_frames(rest, S)
    rules = joint_rules(S)
    q = np.zeros((frames, S.num_joints, 4))
    q[..., 0] = 1.0
    bends = {}
    for j, rule in enumerate(rules):
        if rule.kind == "hinge_lower":
            up = fr[rule.chain[0]]
            bends[j] = 1.2 + 1.2 * _smooth(rng, frames, 1, 1.0)[:, 0]
            q[:, j] = quat_from_axis_angle(np.cross(up[:, 1], rule.bend * up[:, 2]), bends[j])
        elif j == 0:
            tilt = _smooth(rng, frames, 3, 0.4)
            q[:, j] = quat_mul(quat_from_axis_angle([0.0, 1.0, 0.0], _smooth(rng, frames, 1, 3.0)[:, 0]),
                               quat_from_axis_angle(tilt, np.linalg.norm(tilt, axis=-1)))
        else:
            amp = {"hinge_upper": 0.9, "spine": 0.35, "kabsch": 0.35, "parent": 0.25, "foot": 0.4, "leaf": 0.5}
            v = _smooth(rng, frames, 3, amp[rule.kind])
            if rule.kind == "hinge_upper":
                v = v + fr[j][:, 1] * _smooth(rng, frames, 1, 1.2)
            q[:, j] = quat_from_axis_angle(v, np.linalg.norm(v, axis=-1))
    root = np.cumsum(np.concatenate([np.zeros((1, 3)), _smooth(rng, frames - 1, 3, 0.05)]), axis=0) + [0, 0.9, 0]
    return q, forward_kinematics(q, root, rest, S.parents), bends, rest


def twist_error(quats: np.ndarray, truth: np.ndarray, bends: dict[int, np.ndarray]) -> tuple[float, float]:
    """(mean, max) degrees between solved and true world rotations of hips and shoulders where bent >= 15 deg."""
    solved = quat_from_matrix(local_to_world(quats, S.parents))
    true = quat_from_matrix(local_to_world(truth, S.parents))
    errs = []
    for j, rule in enumerate(joint_rules(S)):
        if rule.kind == "hinge_upper":
            bent = np.degrees(bends[rule.chain[1]]) >= 15.0
            errs.append(np.degrees(quat_angle(solved[bent, j], true[bent, j])))
    e = np.concatenate(errs)
    return float(e.mean()), float(e.max())


# ---------------------------------------------------------------- runs

def load_clip(data: Path, frames: int) -> tuple[str, np.ndarray]:
    """momask_000612 (199 frames) cut to `frames`, else 012314 looped; joints (T, 22, 3) float64."""
    from model_backend.motion.features import features_to_joints
    momask = data / "momask_000612_features.npy"
    if momask.exists():
        j = features_to_joints(np.load(momask)).astype(np.float64)
        name = "momask_000612"
    else:
        j = np.load(data / "012314_joints.npy").astype(np.float64)
        name = "012314"
    while len(j) < frames:  # loop (ping-pong keeps it continuous)
        j = np.concatenate([j, j[::-1][1:]])
    return name, j[:frames]


def clip_arguments(doc: str) -> argparse.Namespace:
    """--data (the HumanML3D folder), --frames and --repeats of the rig benchmarks."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "humanml3d")
    ap.add_argument("--frames", type=int, default=196)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rig", choices=("all", "mixamo", "rigify"), default="all",
                    help="benchmarks/rig.py: the 65-bone Mixamo-style rig, the generated Rigify rig, or both")
    return ap.parse_args()


def main() -> None:
    args = clip_arguments(__doc__)

    name, joints = load_clip(args.data, args.frames)
    rest = rest_offsets_for(joints, S)
    truth_q, truth_joints, bends, truth_rest = synthetic(0, args.frames)
    solvers = {
        "ours (swing + twist)": lambda j, r: solve(j, S, rest=r).local_quats,
        "swing-only analytic": swing_only,
        "iterative IK, 10 sweeps": lambda j, r: iterative_ik(j, r, 10),
        "iterative IK, 100 sweeps": lambda j, r: iterative_ik(j, r, 100),
    }
    rows = []
    for label, fn in solvers.items():
        repeats = 1 if "100" in label else args.repeats
        seconds = best_time(lambda: fn(joints, rest), repeats)
        q = fn(joints, rest)
        fk = forward_kinematics(q, joints[:, 0], rest, S.parents)
        dir_mean, dir_max = bone_direction_error_deg(fk, joints)
        pos_mean, _ = position_error_mm(fk, joints)
        jitter = twist_jitter(_frames_from_locals(q, rest))[0][1:].mean()
        sq = fn(truth_joints, truth_rest)
        tw_mean, tw_max = twist_error(sq, truth_q, bends)
        rows.append((label, seconds, dir_mean, dir_max, pos_mean, jitter, tw_mean, tw_max))

    ours = rows[0]
    print(f"Rig core benchmark: {name}, {args.frames} frames at {S.fps:g} fps, "
          f"best of {args.repeats} (1 for 100 sweeps), OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\n")
    print("| solver | time ms | x ours | bone dir err mean / max deg | joint err mean mm | "
          "twist jitter deg/frame | synthetic hip+shoulder rot err mean / max deg |")
    print("|---|---|---|---|---|---|---|")
    for label, sec, dm, dx, pm, jit, tm, tx in rows:
        print(f"| {label} | {sec * 1e3:.1f} | {sec / ours[1]:.1f} | {dm:.2g} / {dx:.2g} | {pm:.2g} | "
              f"{jit:.2f} | {tm:.2g} / {tx:.2g} |")
    print("\nBone-direction error ratio to ours (mean): " + ", ".join(
        f"{r[0]}: {r[2] / max(ours[2], 1e-12):.3g}" for r in rows[1:]))
    pipeline(args, name, joints)


def pipeline(args: argparse.Namespace, name: str, joints: np.ndarray) -> None:
    """The rest of the numpy chain on the same clip: rest pose, foot locking, root, BVH."""
    import tempfile

    from model_backend.motion.bvh import write_bvh
    from model_backend.rig_math.footlock import lock_feet
    from model_backend.rig_math.metrics import foot_skating_ratio, mean_jerk
    from model_backend.motion.features import contacts_from_features
    from model_backend.rig_math.rootmotion import root_motion

    feats = args.data / f"{name}_features.npy"
    contacts = contacts_from_features(np.load(feats))[:len(joints)] if feats.exists() else None
    locked = lock_feet(joints, S, contacts=contacts)
    motion = solve(locked, S)
    with tempfile.TemporaryDirectory() as tmp:
        steps = [
            ("rest pose from the clip (rest_offsets_for)", lambda: rest_offsets_for(joints, S)),
            ("solve with rest inference", lambda: solve(joints, S)),
            ("foot locking (lock_feet)", lambda: lock_feet(joints, S, contacts=contacts)),
            ("root channels (root_motion, root bone)", lambda: root_motion(joints, S, mode="root_bone")),
            ("BVH write", lambda: write_bvh(Path(tmp) / "clip.bvh", motion, S.fps)),
        ]
        print("\n| step | time ms |\n|---|---|")
        for label, fn in steps:
            print(f"| {label} | {best_time(fn, args.repeats) * 1e3:.1f} |")
    print(f"\nFoot locking on {name}: skating ratio {foot_skating_ratio(joints):.3f} -> "
          f"{foot_skating_ratio(locked):.3f}, mean jerk {mean_jerk(joints):.1f} -> {mean_jerk(locked):.1f} m/s^3")


if __name__ == "__main__":
    main()
