"""Progress reporting for long computations.

Long functions accept ``progress: ProgressCallback | None``; they call it with the fraction done (0..1) and a
short message, and never print. The CLI turns it into a progress bar, Slicer into its progress dialog.
A callback may raise :class:`Cancelled` to stop the computation.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback", "Cancelled", "report", "scaled"]

ProgressCallback = Callable[[float, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to cancel the running computation."""


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``progress`` if it is set, with the fraction clipped to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """Return a callback that maps a sub-task's 0..1 onto ``start..stop`` of ``progress``."""
    if progress is None:
        return None

    def _inner(fraction: float, message: str) -> None:
        report(progress, start + (stop - start) * fraction, message)

    return _inner
