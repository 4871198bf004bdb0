"""Where progress bars go: the terminal when stderr is one, else the rule's log file (set by
`laminae.stages.runner.configure_logging`).

    >>> tqdm(items, file=progress_stream())
"""

from __future__ import annotations

import sys
from typing import TextIO

_stream: TextIO = sys.stderr


def progress_stream() -> TextIO:
    return _stream


def set_progress_stream(stream: TextIO) -> None:
    global _stream
    _stream = stream
