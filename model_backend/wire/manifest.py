"""The model folder's `manifest.json`: read, validate, write (plain Python, no torch).

A model folder (docs/model-folder.md) is written by `irg-motion convert` or
`irg-motion make-fixture`; everything that loads one starts here, so a wrong or
incomplete folder fails with one message that names the folder, the problem
and the fix.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..rig_math.skeleton import skeleton_for

FORMAT = "irg-motion-model"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_ENV = "IRG_MODEL_DIR"  # a model folder to use when none is given
# The demo model the project ships, relative to the folder that holds model_backend (the
# checkout, or the installed extension): the one place that names it.
DEMO_MODEL = ("presets", "models", "irg-tiny")
FIX_HINT = "run `irg-motion convert` (real checkpoints) or `irg-motion make-fixture` (test model) to write it again"

REQUIRED_KEYS = ("format", "format_version", "name", "stage", "dataset", "feature_size",
                 "num_joints", "fps", "fixture", "vqvae", "motion_tokens")
VQVAE_KEYS = ("file", "feature_size", "width", "code_dim", "num_codes", "depth",
              "dilation_growth", "down_t", "stride_t")
MOTION_TOKEN_KEYS = ("start", "end", "start_id", "end_id", "first_id", "count")
# Files every folder needs besides the manifest (the VQ-VAE file is named in the manifest).
REQUIRED_FILES = ("llm/config.json", "mean.npy", "std.npy")


# Sane bounds for the sizes a model folder declares, checked before anything is allocated: a
# manifest or config.json edited (or made hostile) to ask for 100k layers must fail at once.
# Each bound is far above the released models (published VQ-VAE: width 512, depth 3; Gemma-2-2b:
# 26 layers, hidden 2304, 256k vocabulary) and below what would take minutes or GBs to build.
VQVAE_BOUNDS = {"feature_size": (1, 1024), "width": (1, 2048), "code_dim": (1, 2048), "num_codes": (1, 65536),
                "depth": (1, 16), "dilation_growth": (1, 16), "down_t": (0, 6), "stride_t": (1, 8)}
MAX_VQVAE_PARAMETERS = 200_000_000  # the published VQ-VAE has 19.7 M
LLM_CONFIG_BOUNDS = {"num_hidden_layers": (1, 256), "hidden_size": (1, 32768), "intermediate_size": (1, 131072),
                     "num_attention_heads": (1, 256), "num_key_value_heads": (1, 256), "head_dim": (1, 1024),
                     "vocab_size": (1, 1 << 20), "max_position_embeddings": (1, 1 << 20)}



class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or inconsistent; the message says how to fix it."""


def folder_error(model_dir: str | Path, problem: str) -> ModelFolderError:
    """The error for a problem with a model folder: names the folder, the problem and the fix."""
    return ModelFolderError(f"model folder {model_dir}: {problem}; {FIX_HINT}")


def validate_manifest(data: Any, model_dir: str | Path = "<unsaved>") -> dict[str, Any]:
    """Check a manifest's content (keys, types, consistency); return it or raise ModelFolderError."""
    if not isinstance(data, dict):
        raise folder_error(model_dir, f"{MANIFEST_NAME} must hold a JSON object, not {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise folder_error(model_dir, f"{MANIFEST_NAME} has format {data.get('format')!r}, expected {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise folder_error(model_dir, f"{MANIFEST_NAME} has format_version {data.get('format_version')!r}; "
                                      f"this irg-motion reads version {FORMAT_VERSION}")
    _require_keys(model_dir, data, REQUIRED_KEYS, MANIFEST_NAME)
    _require_keys(model_dir, data["vqvae"], VQVAE_KEYS, f'{MANIFEST_NAME} "vqvae"')
    _require_keys(model_dir, data["motion_tokens"], MOTION_TOKEN_KEYS, f'{MANIFEST_NAME} "motion_tokens"')
    _check_values(model_dir, data)
    return data


def _require_keys(model_dir: str | Path, obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise folder_error(model_dir, f"{where} must be a JSON object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise folder_error(model_dir, f"{where} lacks the key(s) {', '.join(missing)}")


def _check_values(model_dir: str | Path, data: dict[str, Any]) -> None:
    if data["stage"] not in (1, 2, 3):
        raise folder_error(model_dir, f"stage must be 1, 2 or 3, not {data['stage']!r}")
    try:
        skeleton = skeleton_for(str(data["dataset"]))
    except ValueError as exc:
        raise folder_error(model_dir, str(exc)) from None
    facts = {"feature_size": skeleton.feature_size, "num_joints": skeleton.num_joints, "fps": skeleton.fps}
    for key, expected in facts.items():
        if data[key] != expected:
            raise folder_error(model_dir, f"{key} is {data[key]!r} but {skeleton.name} has {expected}")
    if data["vqvae"]["feature_size"] != data["feature_size"]:
        raise folder_error(model_dir, f"vqvae.feature_size {data['vqvae']['feature_size']} differs from "
                                      f"feature_size {data['feature_size']}")
    tokens = data["motion_tokens"]
    ids = [tokens[k] for k in ("start_id", "end_id", "first_id", "count")]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 24 for i in ids):
        raise folder_error(model_dir, f"motion_tokens ids must be non-negative integers, got {ids}")
    if tokens["count"] != data["vqvae"]["num_codes"]:
        raise folder_error(model_dir, f"motion_tokens.count {tokens['count']} differs from the VQ-VAE's "
                                      f"num_codes {data['vqvae']['num_codes']}")
    if not isinstance(data["fixture"], bool):
        raise folder_error(model_dir, f"fixture must be true or false, not {data['fixture']!r}")
    problem = vqvae_size_problem({k: v for k, v in data["vqvae"].items() if k != "file"})
    if problem:
        raise folder_error(model_dir, f"{MANIFEST_NAME}: {problem}")
    _relative_path(model_dir, data["vqvae"]["file"], "vqvae.file")


def _bounded_ints(values: dict[str, Any], bounds: dict[str, tuple[int, int]], where: str,
                  required: bool = True) -> str | None:
    """The first value that is not an integer within its bound, as a sentence; None when all are."""
    for key, (low, high) in bounds.items():
        if key not in values and not required:
            continue
        value = values.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return f"{where}{key} is {value!r:.40}, outside the sane bound {low}..{high}"
    return None


def vqvae_parameters(hp: dict[str, int]) -> int:
    """The VQ-VAE's parameter count from its hyper-parameters (weights and biases of every layer)."""
    f, w, c, n = hp["feature_size"], hp["width"], hp["code_dim"], hp["num_codes"]
    depth, down, stride = hp["depth"], hp["down_t"], hp["stride_t"]
    conv = lambda cin, cout, k: cin * cout * k + cout  # noqa: E731
    stack = depth * (conv(w, w, 3) + conv(w, w, 1))
    encoder = conv(f, w, 3) + down * (conv(w, w, 2 * stride) + stack) + conv(w, c, 3)
    decoder = conv(c, w, 3) + down * (stack + conv(w, w, 3)) + conv(w, w, 3) + conv(w, f, 3)
    return encoder + decoder + n * c


def vqvae_size_problem(hp: dict[str, Any]) -> str | None:
    """Why these VQ-VAE hyper-parameters cannot be sane (None when they can), before building anything."""
    problem = _bounded_ints(hp, VQVAE_BOUNDS, "vqvae.")
    if problem is None and vqvae_parameters(hp) > MAX_VQVAE_PARAMETERS:
        problem = (f"the VQ-VAE would have {vqvae_parameters(hp):,} parameters, more than the sane bound "
                   f"{MAX_VQVAE_PARAMETERS:,} (the published one has 19.7 M)")
    return problem


def llm_config_problem(config: dict[str, Any]) -> str | None:
    """Why an llm/config.json's sizes cannot be sane (None when they can), before building anything."""
    return _bounded_ints(config, LLM_CONFIG_BOUNDS, "llm/config.json ", required=False)


def inside(model_dir: Path, rel: Any, what: str = "file") -> Path:
    """`model_dir / rel`, refused (ModelFolderError) unless it resolves inside the folder.

    `rel` must be a relative path without `..`; symlinks are resolved, so a link that
    leads out of the folder is refused too.
    """
    path = Path(model_dir) / _relative_path(model_dir, rel, what)
    if not _is_inside(path, model_dir):
        raise folder_error(model_dir, f"{rel} leads outside the folder (a symlink to {path.resolve()}); "
                                      "weights must lie inside the model folder")
    return path


def _relative_path(model_dir: str | Path, rel: Any, what: str) -> str:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise folder_error(model_dir, f"{what} {rel!r:.300} must be a relative path inside the folder "
                                      "(no absolute path, no ..)")
    return rel


def _is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(Path(folder).resolve())


def check_contained(model_dir: Path) -> None:
    """Refuse a folder holding any symlink that leads outside it (ModelFolderError naming it)."""
    root = Path(model_dir)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            if path.is_symlink() and not _is_inside(path, root):
                rel = path.relative_to(root).as_posix()
                raise folder_error(root, f"{rel} leads outside the folder (a symlink to {path.resolve()}); "
                                         "weights must lie inside the model folder")


def read_manifest(model_dir: str | Path, *, check_files: bool = True) -> dict[str, Any]:
    """Read and validate `model_dir/manifest.json`; with `check_files`, also the files it implies.

    Raises ModelFolderError naming the folder, the missing file or key, and the fix.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise folder_error(folder, "not found (no such folder)")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise folder_error(folder, f"{MANIFEST_NAME} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting past the limit
        raise folder_error(folder, f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
    validate_manifest(data, folder)
    if check_files:
        check_contained(folder)
        for rel in (*REQUIRED_FILES, data["vqvae"]["file"]):
            if not inside(folder, rel).is_file():
                raise folder_error(folder, f"{rel} is missing")
    return data


def write_manifest(model_dir: str | Path, data: dict[str, Any]) -> Path:
    """Validate `data` and write it as `model_dir/manifest.json` (atomically); return the path."""
    folder = Path(model_dir)
    validate_manifest(data, folder)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a manifest is not a secret
        os.replace(tmp, folder / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / MANIFEST_NAME


def default_model_dir() -> Path:
    """Where the demo model lives: presets/models/irg-tiny beside model_backend, in a checkout and
    in the installed extension alike (a backend installed from its wheel has none there)."""
    return Path(__file__).resolve().parents[2].joinpath(*DEMO_MODEL)


def shipped_model() -> Path | None:
    """The demo model's folder when it is there (it holds manifest.json), else None."""
    folder = default_model_dir()
    return folder if (folder / MANIFEST_NAME).is_file() else None


def resolve_model_dir(given: str | os.PathLike | None) -> str | None:
    """The model folder to use: the one given, else $IRG_MODEL_DIR, else the demo model; None when
    there is none of these."""
    for choice in (given, os.environ.get(MODEL_ENV)):
        if choice and str(choice).strip():
            return str(choice)
    found = shipped_model()
    return str(found) if found is not None else None


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def created_by(command: str) -> str:
    """The manifest's "created_by": `irg-motion <version> <command>` ("dev" in a source tree)."""
    try:
        version = importlib.metadata.version("irg-motion")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        version = "dev"
    return f"irg-motion {version} {command}"


def make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create private files; a model folder is meant to be shared."""
    for path in (folder, *folder.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
