"""Reading weight files safely: safetensors, or torch.save read with weights_only=True, so no
code inside a file can run. Shared by the VQ-VAE loader and the converter (needs torch)."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any


def read_weights(path: Path, error: type[Exception]) -> Any:
    """The top-level object of a .safetensors or torch.save file; a file that cannot be read
    raises `error` naming the file, the problem and the fix."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise error(f"{path}: not a readable safetensors file, perhaps truncated ({exc})") from None
    try:
        try:  # mmap: a 10 GB checkpoint is paged in, not copied into memory
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise error(
            f"{path}: refused to load: the file holds a Python object that is not plain tensors{what}, and "
            "only weights are loaded (torch.load weights_only=True) so no code from the file can run. If you "
            "trust the file, re-save only its tensors (see docs/model-setup.md) and use that") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not a readable torch.save file: the file is truncated, corrupted "
                    f"or of another format ({detail}); download it again") from None
