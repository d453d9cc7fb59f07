"""'Set up backend': real venvs, real pip, offline. A tiny project with an in-tree build backend
stands in for the backend package (installed as a wheel and from its source folder); the torch
step is skipped (torch_build="skip") so nothing is downloaded."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from irg_blender_addon.backend.setup import BackendSetupJob, PipOutput, bundled_wheel, venv_python
from irg_blender_addon.backend.process_job import StepResult
from job_runs import pump_to_end, run_job

# A PEP 517 backend inside the project, so pip builds it offline with nothing to download.
DUMMY_BACKEND = '''\
import base64, hashlib, pathlib, zipfile

VERSION = "{version}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    root = pathlib.Path(__file__).parent
    dist = f"irg_dummy-{{VERSION}}.dist-info"
    files = {{
        "irg_dummy/__init__.py": (root / "irg_dummy" / "__init__.py").read_bytes(),
        f"{{dist}}/METADATA": f"Metadata-Version: 2.1\\nName: irg-dummy\\nVersion: {{VERSION}}\\n".encode(),
        f"{{dist}}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: irg-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
        f"{{dist}}/entry_points.txt": b"[console_scripts]\\nirg-dummy = irg_dummy:main\\n",
    }}
    name = f"irg_dummy-{{VERSION}}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
        zf.writestr(f"{{dist}}/RECORD", "\\n".join(record + [f"{{dist}}/RECORD,,"]) + "\\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError("wheels only")
'''
PYPROJECT = '''\
[build-system]
requires = []
build-backend = "dummy_backend"
backend-path = ["."]

[project]
name = "irg-dummy"
version = "{version}"
'''
CHECK = ("irg_dummy",)


def _project(folder: Path, version: str) -> Path:
    (folder / "irg_dummy").mkdir(parents=True)
    (folder / "irg_dummy/__init__.py").write_text(
        f'__version__ = "{version}"\n\n\ndef main():\n    print("irg-dummy", __version__)\n')
    (folder / "dummy_backend.py").write_text(DUMMY_BACKEND.format(version=version))
    (folder / "pyproject.toml").write_text(PYPROJECT.format(version=version))
    return folder


def _wheel(project: Path, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location(f"dummy_backend_{id(project)}", project / "dummy_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out.mkdir()
    return out / module.build_wheel(str(out))


@pytest.fixture(scope="module", autouse=True)
def offline_pip():
    """pip sees no configuration and no index: everything it installs is local."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.setenv("PIP_NO_INDEX", "1")
        mp.delenv("PIP_FIND_LINKS", raising=False)
        mp.delenv("PIP_INDEX_URL", raising=False)
        mp.delenv("PIP_EXTRA_INDEX_URL", raising=False)
        yield


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("projects")
    v1 = _project(root / "irg-dummy-0.1", "0.1.0")
    return {"wheel": _wheel(v1, root / "dist"), "source": _project(root / "irg-dummy-0.2", "0.2.0")}


def _run(job: BackendSetupJob, timeout: float = 120.0, while_running=None) -> list[tuple[float, str]]:
    return run_job(job, timeout, while_running=while_running)


def _stages(samples) -> list[str]:
    out: list[str] = []
    for _, stage in samples:
        if not out or out[-1] != stage:
            out.append(stage)
    return out


def _installed_version(python: Path | str) -> str:
    return subprocess.run([str(python), "-c", "import irg_dummy; print(irg_dummy.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def good_env(projects, tmp_path_factory) -> dict:
    """An environment built by the job from the 0.1.0 wheel (shared: venvs cost seconds)."""
    env = tmp_path_factory.mktemp("setup") / "backend-env"
    job = BackendSetupJob(sys.executable, env, str(projects["wheel"]), torch_build="skip", check_modules=CHECK)
    started = time.monotonic()
    samples = _run(job)
    return {"job": job, "samples": samples, "env": env, "seconds": time.monotonic() - started}


def test_fresh_build_runs_each_step_with_progress(good_env):
    job, samples, env = good_env["job"], good_env["samples"], good_env["env"]
    assert job.state == "done", job.error
    assert job.error is None and job.result == str(venv_python(env))
    assert _stages(samples) == ["Creating environment", "Installing backend dependencies", "Checking the backend",
                                "Done"]
    progress = [p for p, _ in samples]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len({round(p, 3) for p in progress if 0 < p < 1}) >= 3  # it moved within the job, not only at the end
    assert "Successfully installed irg-dummy-0.1.0" in job.log_tail(50)
    assert job.info["irg_dummy"] == "0.1.0" and job.info["dist_version"] == "0.1.0"
    assert Path(job.info["python"]).parent.parent == env
    assert _installed_version(job.result) == "0.1.0"
    # Built in backend-env.new, then moved: the console script's shebang follows the move.
    assert not env.with_name("backend-env.new").exists()
    assert ".new" not in (env / "bin/activate").read_text() + (env / "pyvenv.cfg").read_text()
    script = subprocess.run([str(env / "bin/irg-dummy")], capture_output=True, text=True)
    assert script.stdout.strip() == "irg-dummy 0.1.0", script.stderr


def test_rerun_on_a_good_env_only_checks_it(good_env, projects):
    env = good_env["env"]
    marker = env / "marker.txt"
    marker.write_text("this environment was not rebuilt")
    job = BackendSetupJob(sys.executable, env, str(projects["wheel"]), torch_build="skip", check_modules=CHECK)
    started = time.monotonic()
    samples = _run(job)
    assert job.state == "done", job.error
    assert _stages(samples) == ["Checking the backend", "Done"]
    assert job.result == str(venv_python(env)) and job.info["dist_version"] == "0.1.0"
    assert marker.exists()
    assert time.monotonic() - started < good_env["seconds"]


def test_failed_install_names_the_step_and_keeps_the_previous_env(good_env):
    env = good_env["env"]
    # Another version than the one installed: the env is rebuilt, and pip finds no such package.
    job = BackendSetupJob(sys.executable, env, "irg-dummy==9.9", torch_build="skip", check_modules=CHECK)
    samples = _run(job)
    assert job.state == "failed" and job.result is None
    assert "Installing backend dependencies" in _stages(samples)
    assert "rebuilding" in job.log_tail(100) and "it holds version 0.1.0, 9.9 was asked for" in job.log_tail(100)
    assert job.error.startswith("Installing backend dependencies failed (exit status 1)")
    assert "irg-dummy==9.9" in job.error and "Fix: check that irg-dummy==9.9" in job.error
    assert "Last lines of the log:" in job.error
    assert _installed_version(venv_python(env)) == "0.1.0"
    assert not env.with_name("backend-env.new").exists()


def test_bad_inputs_fail_before_anything_runs(good_env, projects, tmp_path):
    env = good_env["env"]
    missing = tmp_path / "nowhere" / "irg-motion"
    job = BackendSetupJob(sys.executable, env, str(missing), torch_build="skip")
    job.start()
    assert job.state == "failed" and job.pump() is False and job.pid is None
    assert str(missing) in job.error and "does not exist" in job.error
    assert "pyproject.toml" in job.error and "wheel" in job.error and "irg-motion==0.1.0" in job.error
    assert _installed_version(venv_python(env)) == "0.1.0" and not env.with_name("backend-env.new").exists()

    not_a_venv = tmp_path / "documents"
    not_a_venv.mkdir()
    (not_a_venv / "thesis.txt").write_text("keep me")
    cases = [
        (BackendSetupJob(str(tmp_path / "python3"), tmp_path / "e1", str(projects["wheel"])), "base Python"),
        (BackendSetupJob(sys.executable, tmp_path / "e2", str(projects["wheel"]), torch_build="gpu"), "'gpu'"),
        (BackendSetupJob(sys.executable, not_a_venv, str(projects["wheel"])), "is not a virtual environment"),
        (BackendSetupJob(sys.executable, tmp_path / "e3", str(tmp_path)), "without pyproject.toml"),
        (BackendSetupJob(sys.executable, tmp_path / "e4", "not a requirement!"), "neither an existing file"),
    ]
    for job, words in cases:
        job.start()
        assert job.state == "failed" and words in job.error, job.error
    assert (not_a_venv / "thesis.txt").read_text() == "keep me"
    assert not any((tmp_path / f"e{i}").exists() for i in range(1, 5))


def test_upgrade_from_a_source_folder_swaps_the_env_in_only_when_it_works(projects, tmp_path):
    env = tmp_path / "env"
    first = BackendSetupJob(sys.executable, env, str(projects["wheel"]), torch_build="skip", check_modules=CHECK)
    _run(first)
    assert first.state == "done", first.error
    (env / "marker.txt").write_text("old")
    seen_old_env_working = []

    def old_env_still_works(job):
        if job.stage == "Installing backend dependencies" and not seen_old_env_working:
            seen_old_env_working.append(_installed_version(venv_python(env)))

    job = BackendSetupJob(sys.executable, env, str(projects["source"]), torch_build="skip", check_modules=CHECK)
    _run(job, while_running=old_env_still_works)
    assert job.state == "done", job.error
    assert seen_old_env_working == ["0.1.0"]
    assert job.info["dist_version"] == "0.2.0" and _installed_version(venv_python(env)) == "0.2.0"
    assert not (env / "marker.txt").exists() and not env.with_name("env.new").exists()
    assert ".new" not in (env / "pyvenv.cfg").read_text()
    script = subprocess.run([str(env / "bin/irg-dummy")], capture_output=True, text=True)
    assert script.stdout.strip() == "irg-dummy 0.2.0", script.stderr


def _live_members(group: int) -> list[int]:
    """Processes of a process group that still run (zombies are dead: without a reaping init,
    as in some containers, they stay listed)."""
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc to list a process group")
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_cancel_stops_the_subprocess_and_leaves_nothing(projects, tmp_path):
    env = tmp_path / "env"
    job = BackendSetupJob(sys.executable, env, str(projects["wheel"]), torch_build="skip", check_modules=CHECK)
    job.start()
    assert job.stage == "Creating environment"
    pid = job.pid
    assert pid is not None
    deadline = time.monotonic() + 10
    while len(_live_members(pid)) < 2:  # `python -m venv` runs ensurepip in the same process group
        assert job.pump() and time.monotonic() < deadline, job.log_tail(20)
        time.sleep(0.02)
    job.cancel()
    pump_to_end(job, 15)
    assert job.state == "cancelled" and job.stage == "Cancelled" and job.error is None and job.result is None
    assert _live_members(pid) == []  # the step's whole process group (venv and its ensurepip) has ended
    assert not env.exists() and not env.with_name("env.new").exists()


def test_torch_step_pins_the_version_and_names_an_index_only_when_given(tmp_path):
    job = BackendSetupJob(sys.executable, tmp_path / "env", "irg-motion==0.1.0")
    cpu = job.torch_step("py", cuda=False)
    assert cpu.stage == "Installing torch 2.13.0 (CPU build)"
    assert cpu.argv[:4] == ["py", "-m", "pip", "install"] and cpu.argv[-1] == "torch==2.13.0"
    assert "--index-url" not in cpu.argv and cpu.env == {}
    cuda = job.torch_step("py", cuda=True)
    assert cuda.stage == "Installing torch 2.13.0 (CUDA build)"
    assert cuda.env == {"PIP_FIND_LINKS": ""}  # local CPU wheels must not win (as in the Makefile)
    pinned = BackendSetupJob(sys.executable, tmp_path / "env", "irg-motion", torch_version="2.5.1",
                             torch_index_url="https://example.invalid/cpu")
    step = pinned.torch_step("py", cuda=False)
    assert step.argv[-3:] == ["torch==2.5.1", "--index-url", "https://example.invalid/cpu"]


def test_pip_output_moves_at_phase_changes_and_shows_downloads():
    pip = PipOutput()
    transcript = [
        ("Collecting torch==2.13.0", 0.05, "finding packages: 1"),
        ("  Downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (180.5 MB)", 0.05,
         "downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl (180.5 MB)"),
        ("Progress 90250000 of 180500000", None,
         "downloading torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl: 90 of 180 MB"),
        ("Collecting filelock (from torch==2.13.0)", 0.05, "finding packages: 2"),
        ("Requirement already satisfied: typing-extensions in ./lib", 0.05, "finding packages: 3"),
        ("Installing collected packages: filelock, torch", 0.7, "installing 2 packages"),
        ("Successfully installed filelock-3.16.1 torch-2.13.0", 1.0, "installed 2 packages"),
    ]
    for line, fraction, detail in transcript:
        assert pip.feed(line) == fraction, line
        assert pip.detail == detail


def test_venv_python_on_each_platform(tmp_path):
    assert venv_python(tmp_path, windows=False) == tmp_path / "bin" / "python"
    assert venv_python(tmp_path, windows=True) == tmp_path / "Scripts" / "python.exe"


def test_the_bundled_wheel_is_the_one_of_the_add_ons_version(tmp_path):
    assert bundled_wheel(tmp_path / "absent", "0.1.0") is None
    for name in ("irg_motion-0.1.0-py3-none-any.whl", "irg_motion-0.2.0-py3-none-any.whl",
                 "other-0.1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert bundled_wheel(tmp_path, "0.1.0") == tmp_path / "irg_motion-0.1.0-py3-none-any.whl"
    assert bundled_wheel(tmp_path, "0.3.0") is None  # another version's wheel is never installed


def _report(**fields) -> StepResult:
    """What the check step prints in an environment holding irg-motion 0.1.0 and these torch fields."""
    info = {"python": "/env/bin/python", "model_backend": "", "transformers": "5.24.0", "dist_version": "0.1.0",
            **fields}
    return StepResult(0, ["some warning", "IRG-CHECK " + json.dumps(info)])


@pytest.mark.parametrize("build, cuda, index, report, rebuild_because", [
    ("auto", False, None, {"torch": "2.13.0+cpu", "torch_cuda": None}, None),
    ("auto", False, None, {"torch": "2.13.0", "torch_cuda": "12.8"}, None),  # a CUDA build runs on the CPU too
    ("auto", True, None, {"torch": "2.13.0+cpu", "torch_cuda": None}, "CPU build of torch and the CUDA build"),
    ("cuda", True, None, {"torch": "2.12.1", "torch_cuda": "12.8"}, "torch 2.12.1, 2.13.0 was asked for"),
    ("cpu", False, None, {"torch": "2.13.0", "torch_cuda": "12.8"}, None),  # the index decides: no rebuild in vain
    ("cpu", False, "https://example.invalid/cpu", {"torch": "2.13.0", "torch_cuda": "12.8"},
     "CUDA build of torch and the CPU build"),
    ("skip", None, None, {"torch": "2.1.0", "torch_cuda": None}, None),
])
def test_an_existing_env_is_kept_unless_a_rebuild_would_change_it(tmp_path, build, cuda, index, report,
                                                                  rebuild_because):
    if cuda and not sys.platform.startswith("linux") and index is None:
        pytest.skip("PyPI serves CUDA builds of torch on Linux only")
    job = BackendSetupJob(sys.executable, tmp_path / "env", "irg-motion==0.1.0", torch_build=build,
                          torch_index_url=index)
    job.cuda = cuda  # what the plan decided (from nvidia-smi for "auto")
    why = job._why_not_reusable(_report(**report))
    assert why is None if rebuild_because is None else rebuild_because in why
    assert "the backend does not import" in job._why_not_reusable(StepResult(1, ["ModuleNotFoundError: torch"]))
    newer = BackendSetupJob(sys.executable, tmp_path / "env", "irg-motion==0.2.0", torch_build=build)
    newer.cuda = cuda
    assert "it holds version 0.1.0, 0.2.0 was asked for" in newer._why_not_reusable(_report(**report))
