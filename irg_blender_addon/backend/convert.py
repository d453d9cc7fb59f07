"""'Convert model...': run the backend's converter as a subprocess, pumped without blocking.

`ConvertJob` runs `backend_python -m model_backend convert ...` (docs/model-setup.md) with
the files the user chose, and follows the converter's own progress lines (`  reading
checkpoint ...`, `  preparing weights ...`, ...) to show a stage and a progress bar. The
inputs are checked before anything is spawned. The Hugging Face token never appears on
the command line (other users can read it there): it goes through the environment as
HF_TOKEN, which the hub client reads. Plain Python: no bpy, no torch.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import time
from pathlib import Path

from .process_job import JobError, LineParser, Plan, Step, StepResult, SubprocessJob, last_error_line

__all__ = ["ConvertJob", "ConverterOutput", "DATASETS", "DTYPES"]

DATASETS = ("HumanML3D", "KIT-ML")
DTYPES = ("bfloat16", "float32")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FIX_BACKEND = "set the backend Python in the preferences, or use Set up backend"

# The converter's long steps (its progress lines) -> (stage text, where that step starts).
# Weights follow the steps' share of a real 2.6 B conversion: writing and hashing 5 GB dominate.
CONVERTER_STEPS = {
    "reading checkpoint": ("Reading the checkpoint", 0.05),
    "preparing weights": ("Preparing the weights", 0.25),
    "writing llm/model.safetensors": ("Writing the model", 0.45),
    "hashing the source files": ("Hashing the source files", 0.75),
    "verifying": ("Verifying the folder", 0.88),
}
_STEP_STARTS = sorted(start for _, start in CONVERTER_STEPS.values())
_STEP_LINE = re.compile(r"^ {2}(?P<step>\S.*?)(?: \.\.\.|\s+(?P<pct>\d{1,3})%)$")
_ERROR_LINE = re.compile(r"^irg-motion \w+: error: (.*)$")


class ConverterOutput(LineParser):
    """Stage and progress from what `irg-motion convert` prints on stderr.

    Each long step starts with `  <step> ...` (not a terminal) or redraws `  <step>  42%`
    (a terminal); findings are plain lines (`tokenizer: ...`, `stage: 3 (...)`, `warning: ...`,
    `note: ...`) and the summary starts with `converted in`."""

    def __init__(self) -> None:
        self.stage: str | None = "Starting the converter"
        self.detail = ""
        self.warnings: list[str] = []
        self.summary: list[str] = []
        self.error = ""

    def feed(self, line: str) -> float | None:
        if self.summary:  # the summary's indented lines follow its first line
            self.summary.append(line.rstrip())
            return None
        if m := _STEP_LINE.match(line.rstrip()):
            return self._step(m.group("step"), m.group("pct"))
        text = line.strip()
        if m := _ERROR_LINE.match(text):
            self.error = m.group(1)
        elif text.startswith("converted in "):
            self.summary.append(text)
            self.stage, self.detail = "Finishing", ""
            return 0.98
        elif text.startswith("warning: "):
            self.warnings.append(text[len("warning: "):])
        elif text.startswith("base: fetching"):
            self.stage = "Downloading the base config and tokenizer"
            return 0.01
        elif text.startswith(("tokenizer: ", "stage: ")):
            self.stage, self.detail = "Reading the base config and tokenizer", text
            return 0.03
        return None

    def _step(self, step: str, pct: str | None) -> float | None:
        known = CONVERTER_STEPS.get(step)
        if known is None:
            self.detail = step
            return None
        self.stage, start = known
        self.detail = f"{int(pct)}%" if pct is not None else ""
        if pct is None:
            return start
        end = next((s for s in _STEP_STARTS if s > start), 0.98)
        return start + (end - start) * min(int(pct), 100) / 100


class ConvertJob(SubprocessJob):
    """Convert released IRG-MotionLLM pieces into a model folder; `result` is the folder when done.

    checkpoint, vqvae, mean, std: the files (vqvae may be None or "" when the checkpoint holds
    the VQ-VAE under `net.`). base: a folder with the Gemma-2-2b-it config and tokenizer, or
    the hub id `google/gemma-2-2b-it` (then `token` is used, passed as HF_TOKEN). out_dir: a
    new or empty folder. stage None: the converter guesses it from the file name.
    After the run: `summary` (the converter's closing report) and `warnings` (for example a
    tokenizer that is not the stock one).
    """

    def __init__(self, backend_python: str, checkpoint: str | Path, base: str | Path, vqvae: str | Path | None,
                 mean: str | Path, std: str | Path, out_dir: str | Path, stage: int | None = None,
                 dataset: str = "HumanML3D", dtype: str = "bfloat16", token: str | None = None) -> None:
        super().__init__()
        self.backend_python = Path(backend_python).expanduser()
        self.checkpoint = _absolute(checkpoint)
        self.vqvae = _absolute(vqvae) if vqvae else None
        self.mean, self.std = _absolute(mean), _absolute(std)
        self.out_dir = _absolute(out_dir)
        self.base = str(base).strip()
        self.stage_number = stage
        self.dataset = dataset
        self.dtype = dtype
        self.token = token or None
        self.summary = ""
        self._output = ConverterOutput()
        self._started = 0.0

    def command(self) -> list[str]:
        """The converter's command line (never holds the token)."""
        argv = [str(self.backend_python), "-u", "-m", "model_backend", "convert",
                "--checkpoint", str(self.checkpoint), "--base", self._base_argument(),
                "--mean", str(self.mean), "--std", str(self.std), "--out", str(self.out_dir),
                "--dataset", self.dataset, "--dtype", self.dtype]
        if self.vqvae is not None:
            argv += ["--vqvae", str(self.vqvae)]
        if self.stage_number is not None:
            argv += ["--stage", str(self.stage_number)]
        return argv

    def environment(self) -> dict[str, str]:
        """The converter's environment: the token, when given, as HF_TOKEN."""
        return self._environment()

    # -- inputs --------------------------------------------------------------------

    def _validate(self) -> None:
        python = self.backend_python
        if not python.is_file() or not os.access(python, os.X_OK):
            raise JobError(f"The backend Python {python} is not an executable file: {FIX_BACKEND}.")
        files = [("IRG checkpoint", self.checkpoint), ("VQ-VAE", self.vqvae), ("mean", self.mean), ("std", self.std)]
        for what, path in files:
            if path is not None and not path.is_file():
                problem = "is a folder, choose the file" if path.is_dir() else "does not exist"
                raise JobError(f"The {what} file {path} {problem}.")
        self._validate_base()
        if self.stage_number not in (None, 1, 2, 3):
            raise JobError(f"The stage must be 1, 2 or 3 (or left to the converter), not {self.stage_number!r}.")
        if self.dataset not in DATASETS:
            raise JobError(f"The dataset must be one of {', '.join(DATASETS)}, not {self.dataset!r}.")
        if self.dtype not in DTYPES:
            raise JobError(f"The precision must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        out = self.out_dir
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise JobError(f"The output folder {out} exists and is not empty: choose a new folder (a conversion "
                           "never overwrites one).")

    def _validate_base(self) -> None:
        if not self.base:
            raise JobError("The base is not set: choose the folder with the Gemma-2-2b-it config.json and tokenizer "
                           "files, or enter the hub id google/gemma-2-2b-it.")
        path = Path(self.base).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise JobError(f"The base folder {path} has no config.json: choose the folder with the Gemma-2-2b-it "
                               "config.json and tokenizer files.")
        elif not _HUB_ID.match(self.base):
            raise JobError(f"The base folder {path} does not exist (and it is not a hub id such as "
                           "google/gemma-2-2b-it).")

    def _base_argument(self) -> str:
        path = Path(self.base).expanduser()
        return str(path.absolute()) if path.exists() else self.base

    # -- the run -------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        if self.token:
            env["HF_TOKEN"] = self.token
        return env

    def _plan(self) -> Plan:
        self._started = time.time()
        done = False
        try:
            yield Step("Starting the converter", self.command(), 0.0, 1.0, parser=self._output)
            done = True
        finally:
            self.warnings = list(self._output.warnings)
            self.summary = "\n".join(self._output.summary)
            if not done:
                self._remove_work_folders()
        self.result = str(self.out_dir)

    def _step_failed(self, step: Step, result: StepResult) -> str:
        tail = "\n".join(result.tail)
        if result.returncode is None:
            reason = f"the backend Python could not start ({result.tail[-1] if result.tail else '?'}): {FIX_BACKEND}"
        elif "No module named model_backend" in tail or "No module named 'model_backend'" in tail:
            reason = f"the Python at {self.backend_python} does not have the IRG Motion backend: {FIX_BACKEND}"
        elif "invalid choice: 'convert'" in tail:
            reason = f"the backend at {self.backend_python} is too old to convert: update it with Set up backend"
        elif self._output.error or last_error_line(result.tail):  # the converter's message, else the exception
            reason = self._output.error or last_error_line(result.tail)
        else:
            reason = f"the converter stopped (exit status {result.returncode}); the log below says why"
        return (f"Converting the model failed ({self.stage.lower()}): {reason}\n\nLast lines of the log:\n"
                f"{self.log_tail(15)}")

    def _finish(self, state: str, error: str | None = None) -> None:
        """As ProcessJob; a cancel that came after the converter had renamed the finished folder into
        place ends the job done (the model is there, complete), not cancelled."""
        late = state == "cancelled" and self._converted()
        super()._finish("done" if late else state, error)
        if late:
            self.result = str(self.out_dir)

    def _converted(self) -> bool:
        """True when out_dir holds a model folder this job wrote (the converter renames it into place last)."""
        manifest = self.out_dir / "manifest.json"
        try:
            return manifest.is_file() and manifest.stat().st_mtime >= self._started - 1
        except OSError:
            return False

    def _remove_work_folders(self) -> None:
        """The converter removes its temporary folder when it stops; after a kill it cannot."""
        parent = self.out_dir.parent
        if not parent.is_dir():
            return
        for folder in parent.glob(f".{glob.escape(self.out_dir.name)}.converting-*"):
            try:
                if folder.is_dir() and folder.stat().st_mtime >= self._started - 1:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()

