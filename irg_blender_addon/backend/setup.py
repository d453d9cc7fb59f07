"""'Set up backend': build the backend's Python environment without freezing Blender.

`BackendSetupJob` creates a virtual environment with a base Python (Blender's own:
`sys.executable`), installs torch (CUDA or CPU build), then the backend package and its
dependencies, and checks that the backend imports. Each step is a subprocess; `pump()`
reads what it printed so far and returns at once, so a `bpy.app.timers` function (or a
test, since timers never run headless) drives the job.

The environment is built next to its final place (`<venv>.new`) and swapped in only
after the import check passed, so a failed or cancelled setup leaves the previous
environment working. Re-running on a good environment only runs the check.

The step runner is process_job.SubprocessJob. Plain Python: no bpy, no torch (runs in
Blender's Python 3.11).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import uuid
from pathlib import Path

from .process_job import JobError, LineParser, Plan, Step, StepResult, SubprocessJob

__all__ = ["PipOutput", "BackendSetupJob", "venv_python", "bundled_wheel", "TORCH_BUILDS", "DEFAULT_TORCH_VERSION",
           "BACKEND_MODULES", "BUNDLED_WHEELS"]

TORCH_BUILDS = ("auto", "cpu", "cuda", "skip")
DEFAULT_TORCH_VERSION = "2.13.0"
BACKEND_MODULES = ("model_backend", "torch", "transformers")
BUNDLED_WHEELS = "backend"  # the extension zip's folder that carries the backend wheel (`make extension`)
CHECK_MARK = "IRG-CHECK "
# Run by the environment's Python: import the modules, print their versions as one JSON line.
CHECK_SCRIPT = """\
import importlib, importlib.metadata as md, json, sys
mods, dist = [m for m in sys.argv[1].split(",") if m], sys.argv[2]
out = {"python": sys.executable, "python_version": sys.version.split()[0]}
for name in mods:
    out[name] = getattr(importlib.import_module(name), "__version__", "")
if "torch" in out:
    out["torch_cuda"] = sys.modules["torch"].version.cuda
if dist:
    try:
        out["dist_version"] = md.version(dist)
    except md.PackageNotFoundError:
        out["dist_version"] = None
print("%s" + json.dumps(out), flush=True)
""" % CHECK_MARK
# ---------------------------------------------------------------- pip's output

_PIP_BYTES = re.compile(r"^Progress (\d+) of (\d+)$")  # --progress-bar raw (pip >= 24.1)
_PIP_DOWNLOAD = re.compile(r"^Downloading (\S+)(?: \((.+)\))?")


class PipOutput(LineParser):
    """Where `pip install` is, from the lines it prints.

    The fraction moves at pip's phase changes only: finding packages (`Collecting`,
    `Processing`) 5 %, building wheels 40 %, `Installing collected packages` 70 %,
    `Successfully installed` 100 %. Downloads show in `detail` (bytes with pip >= 24.1)."""

    def __init__(self) -> None:
        self.detail = ""
        self.found = 0
        self.file = ""

    def feed(self, line: str) -> float | None:
        text = line.strip()
        if m := _PIP_BYTES.match(text):
            done, total = int(m.group(1)), int(m.group(2))
            if total > 0:
                self.detail = f"downloading {self.file}: {done / 1e6:.0f} of {total / 1e6:.0f} MB"
            return None
        if text.startswith(("Collecting ", "Processing ", "Requirement already satisfied: ")):
            self.found += 1
            self.detail = f"finding packages: {self.found}"
            return 0.05
        if m := _PIP_DOWNLOAD.match(text):
            self.file = m.group(1).rsplit("/", 1)[-1]
            self.detail = f"downloading {self.file}" + (f" ({m.group(2)})" if m.group(2) else "")
            return 0.05
        if text.startswith(("Building wheel", "Building wheels")):
            self.detail = "building " + text.split(" for ", 1)[-1]
            return 0.4
        if text.startswith("Installing collected packages:"):
            names = [n for n in text.split(":", 1)[1].split(",") if n.strip()]
            self.detail = f"installing {len(names)} package{'s' if len(names) != 1 else ''}"
            return 0.7
        if text.startswith("Successfully installed"):
            self.detail = f"installed {len(text.split()) - 2} package{'s' if len(text.split()) != 3 else ''}"
            return 1.0
        return None


# ---------------------------------------------------------------- the backend environment

def venv_python(venv_dir: str | os.PathLike, windows: bool = os.name == "nt") -> Path:
    """The Python executable of a virtual environment (Scripts/python.exe on Windows)."""
    return Path(venv_dir) / ("Scripts/python.exe" if windows else "bin/python")


def bundled_wheel(folder: str | os.PathLike, version: str) -> Path | None:
    """The irg-motion wheel of `version` in `folder` (where the extension zip carries it), else None."""
    found = sorted(Path(folder).glob(f"irg_motion-{version}-*.whl"))
    return found[-1] if found else None


def _site_packages(venv_dir: Path) -> list[Path]:
    return [*venv_dir.glob("lib/python3*/site-packages"), *venv_dir.glob("Lib/site-packages")]


def _pip_version(venv_dir: Path) -> tuple[int, ...]:
    """pip's version in a venv, read from its dist-info folder name ((0,) if not found)."""
    for site in _site_packages(venv_dir):
        for info in site.glob("pip-*.dist-info"):
            numbers = re.findall(r"\d+", info.name[4:].split("-")[0].split(".dist")[0])
            if numbers:
                return tuple(int(n) for n in numbers[:3])
    return (0,)


_SPEC = r"(?:===?|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.*+!_-]+"
# name[extras] specifiers ; marker (PEP 508 without URLs: those are passed to pip as given)
_REQUIREMENT = re.compile(rf"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*({_SPEC}(?:\s*,\s*{_SPEC})*)?\s*(;.*)?$")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _looks_like_path(source: str) -> bool:
    if "://" in source or "@" in source:
        return False  # a URL or a `name @ url` requirement
    return (source.startswith((".", "~")) or any(c in source for c in "/\\") or source.endswith(".whl")
            or Path(source).expanduser().exists())


def _source_identity(source: str) -> tuple[str | None, str | None]:
    """(distribution name, version) the backend source will install, when it says so."""
    if not _looks_like_path(source):
        m = _REQUIREMENT.match(source.strip())
        if not m:
            return None, None
        pinned = re.fullmatch(r"==\s*([A-Za-z0-9.+!_-]+)", (m.group(3) or "").strip())
        return _normalise(m.group(1)), pinned.group(1) if pinned else None
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".whl":
        parts = path.name.split("-")
        return (_normalise(parts[0]), parts[1]) if len(parts) >= 5 else (None, None)
    try:
        project = tomllib.loads((path / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None, None
    name = project.get("name")
    return (_normalise(name) if name else None), project.get("version")


class BackendSetupJob(SubprocessJob):
    """Create or update the backend environment; `result` is its Python when done.

    base_python: the Python the venv is made from (in Blender: `sys.executable`; in a bpy
        module build that is the venv's python, from which `-m venv` uses the base Python).
    venv_dir: where the environment lives. It is built in `<venv_dir>.new` and swapped in
        after the import check passes; a failure or cancel leaves a previous one untouched.
    backend_source: the IRG Motion source folder (with pyproject.toml), a wheel file, or a
        pip requirement such as `irg-motion==0.1.0`; installed with its dependencies.
    torch_build: "auto" (the CUDA build when `nvidia-smi -L` lists a GPU, else CPU), "cpu",
        "cuda", or "skip" (install no torch explicitly: use the torch already present or
        the one the backend's dependencies bring; for tests and custom environments).
        torch is installed first and pinned to `torch_version`, so no dependency pulls
        another build. Which wheel pip gets comes from the package index: PyPI serves the
        CUDA build on Linux x86-64 and the CPU build on Windows and macOS. To force a build
        give `torch_index_url` (used with pip's --index-url for the torch step only) or
        configure pip (PIP_INDEX_URL / PIP_FIND_LINKS / pip.conf). For the CUDA build local
        find-links are ignored (as the Makefile does), so no local CPU wheel wins.
    force: rebuild even when the existing environment passes the check.
    check_modules: what the final check imports (and prints the versions of).
    """

    def __init__(self, base_python: str, venv_dir: Path | str, backend_source: str, torch_build: str = "auto",
                 torch_version: str = DEFAULT_TORCH_VERSION, *, torch_index_url: str | None = None,
                 force: bool = False, check_modules: tuple[str, ...] = BACKEND_MODULES) -> None:
        super().__init__()
        self.base_python = str(base_python)
        self.venv_dir = Path(venv_dir).expanduser().absolute()
        self.backend_source = str(backend_source).strip()
        self.torch_build = torch_build
        self.torch_version = torch_version
        self.torch_index_url = torch_index_url
        self.force = force
        self.check_modules = tuple(check_modules)
        self.info: dict = {}  # the final check's report: module versions, torch_cuda, python
        self.cuda: bool | None = None  # the torch build chosen (None: torch step skipped)

    @property
    def new_dir(self) -> Path:
        """Where the environment is built before it replaces `venv_dir`."""
        return self.venv_dir.with_name(self.venv_dir.name + ".new")

    # -- inputs --------------------------------------------------------------------

    def _validate(self) -> None:
        base = Path(self.base_python).expanduser()
        if not base.is_file() or not os.access(base, os.X_OK):
            raise JobError(f"The base Python {base} is not an executable file: use Blender's own Python "
                           "(sys.executable inside Blender) or another Python 3.11.")
        if self.torch_build not in TORCH_BUILDS:
            raise JobError(f"torch build {self.torch_build!r} is not one of {', '.join(TORCH_BUILDS)}.")
        if not self.backend_source:
            raise JobError("No backend source given: choose the IRG Motion source folder (with pyproject.toml), "
                           "a wheel file (.whl), or a requirement such as irg-motion==0.1.0.")
        if _looks_like_path(self.backend_source):
            self.backend_source = self._source_path(Path(self.backend_source).expanduser().absolute())
        elif "://" not in self.backend_source and not _REQUIREMENT.match(self.backend_source):
            raise JobError(f"The backend source {self.backend_source!r} is neither an existing file or folder nor "
                           "a pip requirement such as irg-motion==0.1.0.")
        for folder in (self.venv_dir, self.new_dir):
            if folder.exists() and not _is_venv_or_empty(folder):
                raise JobError(f"{folder} exists and is not a virtual environment: choose another folder for "
                               "the backend environment, or remove this one (it is never overwritten).")

    @staticmethod
    def _source_path(path: Path) -> str:
        if path.is_file() and path.suffix == ".whl":
            return str(path)
        if path.is_dir() and ((path / "pyproject.toml").is_file() or (path / "setup.py").is_file()):
            return str(path)
        what = "does not exist" if not path.exists() else (
            "is a folder without pyproject.toml" if path.is_dir() else "is not a wheel (.whl)")
        raise JobError(f"The backend source {path} {what}: choose the IRG Motion source folder (the one with "
                       "pyproject.toml), a wheel file (.whl), or give a requirement such as irg-motion==0.1.0.")

    # -- the steps -----------------------------------------------------------------

    def torch_step(self, python: str, cuda: bool, start: float = 0.0, end: float = 1.0) -> Step:
        """The pip command that installs the pinned torch build."""
        argv = [python, "-m", "pip", "install", *self._pip_progress(), f"torch=={self.torch_version}"]
        if self.torch_index_url:
            argv += ["--index-url", self.torch_index_url]
        build = "CUDA" if cuda else "CPU"
        return Step(f"Installing torch {self.torch_version} ({build} build)", argv, start, end,
                    fix="check the network connection and pip's configuration (index, proxy); to choose the "
                        "build, give the package index that serves it",
                    env={"PIP_FIND_LINKS": ""} if cuda else {}, parser=PipOutput(), hide=_PIP_BYTES)

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.pop("PYTHONPATH", None)  # the new environment must see only its own packages
        env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        return env

    def _pip_progress(self) -> list[str]:
        raw = _pip_version(self.new_dir) >= (24, 1)
        return ["--progress-bar", "raw" if raw else "off"]

    def _check_step(self, python: Path, start: float, end: float, check: bool) -> Step:
        dist, _ = _source_identity(self.backend_source)
        return Step("Checking the backend", [str(python), "-c", CHECK_SCRIPT, ",".join(self.check_modules),
                                             dist or ""], start, end, check=check,
                    fix="the environment was built but the backend does not import: the log says which "
                        "module fails")

    def _plan(self) -> Plan:
        _sweep_trash(self.venv_dir)
        python = venv_python(self.venv_dir)
        probe = self.torch_build == "auto" and shutil.which("nvidia-smi") is not None
        reuse = python.exists() and not self.force
        spans = _spans([("gpu", 1 if probe else 0), ("reuse", 5 if reuse else 0), ("venv", 6),
                        ("torch", 0 if self.torch_build == "skip" else 50), ("backend", 30), ("check", 8)])

        self.cuda = None if self.torch_build == "skip" else self.torch_build == "cuda"
        if probe:
            found = yield Step("Looking for an NVIDIA GPU", ["nvidia-smi", "-L"], *spans["gpu"], check=False)
            self.cuda = found.ok and any(line.startswith("GPU") for line in found.tail)
            self._note(f"NVIDIA GPU {'found' if self.cuda else 'not found'}: the {self._build()} build of torch")
        if reuse:
            existing = yield self._check_step(python, *spans["reuse"], check=False)
            why = self._why_not_reusable(existing)
            if why is None:
                self.info, self.result = _check_report(existing.tail), str(python)
                return
            self._note(f"rebuilding {self.venv_dir}: {why}")

        new = self.new_dir
        _discard(new)  # left over from an interrupted setup
        built = False
        try:
            yield Step("Creating environment",
                       [self.base_python, "-m", "venv", "--prompt", self.venv_dir.name, str(new)], *spans["venv"],
                       fix=f"check that {new.parent} is writable and has free space; a Python without "
                           "ensurepip (Debian/Ubuntu) needs its venv package (python3.11-venv)")
            new_python = str(venv_python(new))
            if self.cuda is not None:
                yield self.torch_step(new_python, self.cuda, *spans["torch"])
            yield Step("Installing backend dependencies",
                       [new_python, "-m", "pip", "install", *self._pip_progress(), self.backend_source],
                       *spans["backend"], parser=PipOutput(), hide=_PIP_BYTES,
                       fix=f"check that {self.backend_source} is the IRG Motion source folder, a wheel or a "
                           "requirement pip can find, and that the package index (network, proxy, pip "
                           "configuration) serves its dependencies")
            final = yield self._check_step(venv_python(new), *spans["check"], check=True)
            self.info = _check_report(final.tail)
            self._warn_build()
            self._swap(new)
            self.info["python"] = str(python)  # it was checked where it was built
            built = True
        finally:
            if not built:
                _discard(new)
        self.result = str(python)

    def _build(self) -> str:
        return "CUDA" if self.cuda else "CPU"

    def _why_not_reusable(self, existing: StepResult) -> str | None:
        """None when the environment already holds what was asked for, else why it does not."""
        report = _check_report(existing.tail)
        if not existing.ok or not report:
            return "the backend does not import there"
        _, wanted = _source_identity(self.backend_source)
        if wanted and report.get("dist_version") not in (None, wanted):
            return f"it holds version {report.get('dist_version')}, {wanted} was asked for"
        if self.cuda is not None and "torch" in report:
            if str(report["torch"]).split("+")[0] != self.torch_version:
                return f"it holds torch {report['torch']}, {self.torch_version} was asked for"
            if self.cuda and not report.get("torch_cuda") and self._build_reachable(cuda=True):
                return "it holds the CPU build of torch and the CUDA build was asked for"
            if self.torch_build == "cpu" and report.get("torch_cuda") and self._build_reachable(cuda=False):
                return "it holds the CUDA build of torch and the CPU build was asked for"
        return None

    def _build_reachable(self, cuda: bool) -> bool:
        """Whether rebuilding would give that torch build (else the environment is kept, not rebuilt
        in vain on every run): with an explicit index, or CUDA on Linux, where PyPI serves it."""
        return bool(self.torch_index_url) or (cuda and sys.platform.startswith("linux"))

    def _warn_build(self) -> None:
        """Say when the index served another torch build than the one asked for."""
        if self.cuda is None or "torch" not in self.info:
            return
        got_cuda = bool(self.info.get("torch_cuda"))
        if self.cuda and not got_cuda:
            self.warnings.append("pip installed the CPU build of torch: the package index has no CUDA build for "
                                 "this platform (on Windows give the PyTorch CUDA index as the torch index URL)")
        elif not self.cuda and got_cuda:
            self.warnings.append("pip installed the CUDA build of torch (it also runs on the CPU, but is a larger "
                                 "download); for the CPU-only build give the PyTorch CPU index as the torch index URL")

    def _swap(self, new: Path) -> None:
        """Put the verified environment in place; the old one goes to the trash only after that."""
        old = _trash_name(self.venv_dir) if self.venv_dir.exists() else None
        try:
            if old is not None:
                os.rename(self.venv_dir, old)
            os.rename(new, self.venv_dir)
        except OSError as exc:
            if old is not None and old.exists() and not self.venv_dir.exists():
                os.rename(old, self.venv_dir)
            raise JobError(f"The new environment could not replace {self.venv_dir} ({exc}): stop the backend "
                           "that runs from it (Windows keeps a running Python's folder locked) and set up "
                           "again. The previous environment is unchanged.") from None
        try:
            _retarget_scripts(self.venv_dir, new)
        except OSError as exc:  # the environment works without: the add-on runs `python -m`
            self.warnings.append(f"the scripts in {self.venv_dir} still name {new} ({exc}): use `python -m`")
        if old is not None:
            _delete_in_background(old)


def _spans(weights: list[tuple[str, float]]) -> dict[str, tuple[float, float]]:
    """Consecutive progress ranges in proportion to each step's weight."""
    total = sum(w for _, w in weights) or 1.0
    out, at = {}, 0.0
    for name, weight in weights:
        out[name] = (at / total, (at + weight) / total)
        at += weight
    return out


def _check_report(tail: list[str]) -> dict:
    for line in reversed(tail):
        if line.startswith(CHECK_MARK):
            try:
                return json.loads(line[len(CHECK_MARK):])
            except json.JSONDecodeError:
                return {}
    return {}


def _is_venv_or_empty(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "pyvenv.cfg").is_file() or not any(folder.iterdir()))


def _trash_name(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _delete_in_background(folder: Path) -> None:
    """Remove a (possibly multi-GB) folder without blocking the caller."""
    threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, daemon=True,
                     name="irg-delete").start()


def _discard(folder: Path) -> None:
    """Move a folder out of the way at once (renamed), then delete it in the background."""
    if not folder.exists():
        return
    trash = _trash_name(folder)
    try:
        os.rename(folder, trash)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    _delete_in_background(trash)


def _sweep_trash(venv_dir: Path) -> None:
    """Delete what an earlier run left in the trash (Blender quit while it was being deleted)."""
    for name in (venv_dir.name, venv_dir.name + ".new"):
        for folder in venv_dir.parent.glob(f".{glob.escape(name)}.trash-*"):
            _delete_in_background(folder)


def _retarget_scripts(venv_dir: Path, built_at: Path) -> None:
    """Venvs record their absolute path in script shebangs and activate files: point them at
    the final place. Binary launchers (Windows .exe) are left alone; the add-on always runs
    `python -m ...`, which does not depend on them."""
    old, new = os.fsencode(str(built_at)), os.fsencode(str(venv_dir))
    bin_dir = venv_dir / ("Scripts" if os.name == "nt" else "bin")
    for path in [venv_dir / "pyvenv.cfg", *(bin_dir.iterdir() if bin_dir.is_dir() else ())]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data or old not in data:
            continue
        path.write_bytes(data.replace(old, new))
