"""Rotations solved off the main thread: a worker per version (or preview) so a pump only writes keys."""
from __future__ import annotations

import threading

import numpy as np

from ..rig import pose

class ChannelSolver:
    """Pose channels for joints, solved off the main thread (pose.solve_channels: numpy only,
    no bpy) on a plan read before on the main thread (pose.plan_channels).

    One solve at a time: `submit` starts it, `take` hands the channels back once ready.
    Dropping the solver drops its result; the thread then ends on its own."""

    def __init__(self, plan: pose.ChannelPlan, *, foot_lock: bool = False, smoothing: bool = False,
                 name: str = "irg-motion-solve"):
        self.plan = plan
        self.foot_lock = bool(foot_lock)
        self.smoothing = bool(smoothing)
        self.name = name
        self._thread: threading.Thread | None = None
        self._result: pose.PoseChannels | Exception | None = None

    @property
    def busy(self) -> bool:
        """A solve is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Nothing running and nothing solved waiting to be taken."""
        return not self.busy and self._result is None

    def submit(self, joints: np.ndarray, src_fps: float, contacts: np.ndarray | None = None) -> None:
        """Start solving (the caller checks `busy` first: one solve at a time)."""
        self._result = None
        self._thread = threading.Thread(target=self._solve, args=(joints, float(src_fps), contacts), daemon=True,
                                        name=self.name)
        self._thread.start()

    def take(self) -> pose.PoseChannels | None:
        """The solved channels once (None while solving or when nothing was submitted); a solve error raises."""
        if self.busy or self._result is None:
            return None
        result, self._result = self._result, None
        if isinstance(result, Exception):
            raise result
        return result

    def _solve(self, joints: np.ndarray, src_fps: float, contacts: np.ndarray | None) -> None:
        try:
            self._result = pose.solve_channels(self.plan, joints, src_fps=src_fps, foot_lock=self.foot_lock,
                                               smoothing=self.smoothing, contacts=contacts)
        except Exception as exc:  # handed to the main thread by take()
            self._result = exc
