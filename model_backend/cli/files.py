"""Motion and token files of the `irg-motion` commands: read and checked before any model loads,
written atomically."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..llm.vocab import NUM_MOTION_CODES
from ..rig_math.skeleton import FRAMES_PER_TOKEN, HUMANML3D, from_blender
from ..wire.manifest import read_manifest
from ..wire.protocol import decode_array
from .common import CliError

def existing_file(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CliError(f"{what} {p} not found: " + ("it is a folder, give a file" if p.is_dir() else
                                                    "check the path"))
    return p

def model_dir(path: str) -> Path:
    """The model folder, checked (manifest and files) before anything heavy is imported."""
    folder = Path(path).expanduser()
    read_manifest(folder)  # ModelFolderError names the folder, the problem and the fix
    return folder

def output_path(path: str) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise CliError(f"output {out} is a folder: give a file name such as {out / 'motion.npz'}")
    if not out.parent.is_dir():
        raise CliError(f"the folder of the output {out} does not exist: create {out.parent} first")
    return out

def read_tokens(spec: str) -> list[int]:
    """Codebook indices from a .npy/.npz/.json/.txt file or a comma/space separated list ("12,7 99")."""
    path = Path(spec).expanduser()
    if path.is_file():
        values = _tokens_from_file(path)
    elif re.fullmatch(r"[\s,\[\]]*\d+([\s,\[\]]+\d+)*[\s,\[\]]*", spec):
        values = [int(t) for t in re.findall(r"\d+", spec)]
    else:
        raise CliError(f"--tokens {spec!r} is neither an existing file (.npy, .npz, .json, .txt) nor a list "
                       "of codebook indices such as '12,7,99'")
    if not values:
        raise CliError(f"--tokens {spec}: no tokens found")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < NUM_MOTION_CODES
               for v in values):
        raise CliError(f"--tokens {spec}: tokens must be codebook indices 0..{NUM_MOTION_CODES - 1}")
    return [int(v) for v in values]

def _tokens_from_file(path: Path) -> list[Any]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False).ravel().tolist()
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "tokens" not in data:
                    raise CliError(f"{path} holds no 'tokens' array (it has {', '.join(data.files)})")
                return data["tokens"].ravel().tolist()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            obj = json.loads(text)
            obj = obj.get("tokens") if isinstance(obj, dict) else obj
            if not isinstance(obj, list):
                raise CliError(f"{path} must hold a JSON list of tokens or an object with a 'tokens' list")
            return obj
        return [int(t) for t in re.findall(r"-?\d+", text)]
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read tokens from {path}: {exc}") from None

def read_joints(path: str, num_joints: int) -> np.ndarray:
    """Joint positions (T, J, 3) from a .npy file, or the `joints` array of a .npz (as written by generate)."""
    p = existing_file(path, "joints file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                if "joints" not in data:
                    raise CliError(f"{p} holds no 'joints' array (it has {', '.join(data.files)})")
                joints = data["joints"]
        else:
            joints = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot read joints from {p}: {exc}; give a .npy array of shape "
                       f"(frames, {num_joints}, 3)") from None
    if joints.ndim != 3 or joints.shape[1:] != (num_joints, 3) or joints.shape[0] < 1:
        raise CliError(f"{p} holds an array of shape {joints.shape}; this model needs (frames, {num_joints}, 3)")
    if not np.isfinite(joints).all():
        raise CliError(f"{p} holds NaN or infinite joint positions")
    return joints.astype(np.float32)

def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in the same folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an output file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

def write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write an .npz atomically: a temporary file in the same folder, renamed into place."""
    write_atomic(path, lambda fh: np.savez(fh, **arrays))

def _array(value: Any) -> np.ndarray:
    return decode_array(value) if isinstance(value, dict) else np.asarray(value)

def motion_arrays(event: dict[str, Any], prompt: str = "") -> dict[str, np.ndarray]:
    """A `motion` event as .npz arrays; joints back in HumanML3D axes (metres, Y up, facing +Z)."""
    return {
        "tokens": np.asarray(event["tokens"], dtype=np.int32),
        "features": _array(event["features"]).astype(np.float32),
        "joints": from_blender(_array(event["joints"])).astype(np.float32),
        "contacts": _array(event["contacts"]).astype(np.float32),
        "fps": np.float32(event["fps"]),
        "prompt": np.str_(prompt),
        "round": np.int32(event.get("round", 1)),
    }

def describe_motion(event: dict[str, Any]) -> str:
    frames = FRAMES_PER_TOKEN * len(event["tokens"])
    return (f"round {event.get('round', 1)}: {len(event['tokens'])} tokens, {frames} frames "
            f"({frames / float(event['fps']):.1f} s at {float(event['fps']):g} fps)")

def write_tokens(path: Path, tokens: list[int]) -> None:
    """Tokens as .npy (int32), .json (a list) or text (comma separated), atomically."""
    def write(fh: BinaryIO) -> None:
        if path.suffix == ".npy":
            np.save(fh, np.asarray(tokens, dtype=np.int32))
        elif path.suffix == ".json":
            fh.write((json.dumps(tokens) + "\n").encode())
        else:
            fh.write((",".join(map(str, tokens)) + "\n").encode())

    write_atomic(path, write)

def motion_file(path: str, fps: float | None, axes: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    """(joints in HumanML3D axes, fps, contacts or None) from an .npz of these commands or a .npy of joints."""
    p = existing_file(path, "motion file")
    contacts = None
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            if "fps" in data and fps is None:
                fps = float(data["fps"])
            if "contacts" in data:
                contacts = data["contacts"].astype(np.float64)
    joints = read_joints(path, HUMANML3D.num_joints)
    if axes == "blender":
        joints = from_blender(joints)
    return joints.astype(np.float64), fps if fps is not None else HUMANML3D.fps, contacts

def write_motion_bvh(out: Path, joints: np.ndarray, fps: float, contacts: np.ndarray | None, *,
                     foot_lock: bool, smooth: bool, source: str) -> str:
    """Solve rotations for HumanML3D joints and write them as a BVH; returns a one-line summary."""
    from ..motion.bvh import write_bvh
    from ..rig_math.footlock import lock_feet
    from ..rig_math.smoothing import savgol
    from ..rig_math.solver import solve

    if contacts is not None and len(contacts) != len(joints):
        contacts = None  # not the contacts of these frames: detect from the positions alone
    try:
        if smooth:
            joints = savgol(joints)
        if foot_lock:
            joints = lock_feet(joints, HUMANML3D, contacts=contacts, fps=fps)
        write_bvh(out, solve(joints, HUMANML3D), fps)
    except ValueError as exc:
        raise CliError(f"cannot convert {source} to BVH: {exc}") from None
    return (f"wrote {out}: {len(joints)} frames at {fps:g} fps, {HUMANML3D.num_joints} joints"
            + (", feet locked" if foot_lock else "") + (", smoothed" if smooth else ""))
