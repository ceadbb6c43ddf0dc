"""One logger for every long-running command: timestamped lines to a log file and to the console."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable


class Logger:
    """``log("message")`` appends ``"<timestamp>: message"`` to ``path`` and prints it.

    ``path=None`` logs to the console only; ``enabled=False`` is silent (e.g. DDP ranks other than 0).
    Console lines go through ``tqdm.write`` so they do not break a progress bar; ``echo`` (a callable taking
    the message without its timestamp) replaces the console when given.
    """

    def __init__(self, path: str | None, console: bool = True, enabled: bool = True,
                 echo: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.console = console
        self.enabled = enabled
        self.echo = echo
        if path is not None and enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, *parts: object) -> None:
        if not self.enabled:
            return
        line = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}: {' '.join(str(p) for p in parts)}"
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        if self.echo is not None:
            self.echo(" ".join(str(p) for p in parts))
        elif self.console:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)


def timestamped_log_path(folder: str, prefix: str) -> str:
    """``<folder>/<prefix>_<YYYY_MM_DD_HH_MM_SS>.txt`` (nnU-Net's naming of training logs)."""
    return os.path.join(folder, f"{prefix}_{datetime.datetime.now():%Y_%m_%d_%H_%M_%S}.txt")
