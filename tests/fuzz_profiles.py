"""Hypothesis profiles of the fuzz harness: `ci` runs a fixed number of cases in `make test`
(about a minute for all fuzz tests together), `long` many more in `make fuzz`
(IRG_FUZZ=long). Derandomised in CI, so a failure there reproduces. Imported as
`fuzz_profiles` (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("IRG_FUZZ") == "long"
# Cases per fuzz test: (ci, long).
CASES = {"requests": (60, 1000), "folders": (20, 300), "checkpoints": (8, 100), "metadata": (200, 20000), "http": (80, 1000)}


def fuzz_settings(name: str) -> settings:
    """The settings of fuzz test `name`: its case count, no deadline (the machine is shared)."""
    ci, long = CASES[name]
    return settings(max_examples=long if LONG else ci, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)
