"""Savitzky-Golay smoothing of positions over time (numpy only).

An optional user setting, off by default in the pipeline: decoded HumanML3D
joints are already smooth, and smoothing softens contacts and snaps. When on,
HY-Motion's choice for translation is the default: window 11, order 5.
"""
from __future__ import annotations

import numpy as np

__all__ = ["savgol_matrix", "savgol"]

DEFAULT_WINDOW = 11
DEFAULT_ORDER = 5


def savgol_matrix(window: int, order: int) -> np.ndarray:
    """(window, window) least-squares projection: row i gives the fitted value at sample i of the window.

    The fit is a polynomial of degree `order` over positions -m..m (m = window // 2);
    the middle row is the classic Savitzky-Golay smoothing kernel.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of frames, got {window}")
    if not 0 <= order < window:
        raise ValueError(f"order must be at least 0 and below the window ({window}), got {order}")
    m = window // 2
    a = np.vander(np.arange(-m, m + 1, dtype=np.float64), order + 1, increasing=True)
    return a @ np.linalg.pinv(a)


def savgol(x: np.ndarray, window: int = DEFAULT_WINDOW, order: int = DEFAULT_ORDER, axis: int = 0) -> np.ndarray:
    """Savitzky-Golay filter of x along `axis` (time); float64 copy, input untouched.

    Interior samples use the centred kernel; the first and last window//2 samples
    are read off the polynomial fitted to the first and last full window (like
    scipy's mode='interp'), so polynomials up to `order` pass through exactly.
    Clips shorter than the window use the largest odd window that fits (and a
    lower order if needed); a clip of `order`+1 frames or fewer is returned as is.
    """
    data = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    n = data.shape[0]
    if not np.all(np.isfinite(data)):
        raise ValueError("cannot smooth NaN or infinite values; clean the input first")
    savgol_matrix(window, order)  # validates the arguments whatever the clip length
    if window > n:
        window = n if n % 2 else n - 1
        order = min(order, window - 1)
    if window < 3 or order >= window - 1:
        return np.moveaxis(data.copy(), 0, axis)
    proj = savgol_matrix(window, order)
    m = window // 2
    flat = data.reshape(n, -1)
    out = np.empty_like(flat)
    windows = np.lib.stride_tricks.sliding_window_view(flat, window, axis=0)  # (n - window + 1, C, window)
    out[m:n - m] = windows @ proj[m]
    out[:m] = proj[:m] @ flat[:window]
    out[n - m:] = proj[m + 1:] @ flat[n - window:]
    return np.moveaxis(out.reshape(data.shape), 0, axis)
