"""The command line's progress display (used by ``theratwin`` and its cohort commands)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["CliProgress"]


class CliProgress:
    """Progress callback: a tqdm bar on a terminal; without one (cron, CI logs) a plain line whenever the step
    changes or another tenth is done, never carriage-return frames; nothing when quiet."""

    def __init__(self, quiet: bool, label: str, stream: Any = None) -> None:
        self.quiet = quiet
        self.label = label
        self.bar: Any = None
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._last: tuple[int, str] | None = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        if not self.interactive:
            step = message.split(" (")[0].split(":")[0][:40]
            key = (int(fraction * 10), step)
            if key != self._last:  # a new tenth or a new step: one line
                self._last = key
                print(f"{self.label}: {100 * fraction:3.0f}% {message[:80]}", file=self.stream, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, desc=self.label, file=sys.stderr, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.n = int(round(fraction * 1000))
        self.bar.set_postfix_str(message[:60])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
