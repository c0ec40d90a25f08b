"""A quiet terminal: Lightning's banners once per process, no checkpoint-restore lines, and the
deprecation warning Lightning's own code raises under newer torch filtered where it arises."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# Lightning's info lines that the fold loop makes meaningless: it restores each fold's best
# checkpoint itself, and says so in the fold's result line.
_DROPPED = (
    "Restoring states from the checkpoint",
    "Restored all states from the checkpoint",
    "Loaded model weights from the checkpoint",
)


class OncePerProcess(logging.Filter):
    """Lets each distinct message through once; drops the checkpoint-restore lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_DROPPED) or message in self.seen:
            return False
        self.seen.add(message)
        return True


_FILTER = OncePerProcess()


def install() -> None:
    """Puts the filter on Lightning's log handlers and filters Lightning's LeafSpec warning."""
    import lightning  # noqa: F401  (adds Lightning's handlers)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        log = logging.getLogger(name)
        for handler in log.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
    # Raised by Lightning's _pytree helper for every batch tree under torch >= 2.9; harmless.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )


@contextlib.contextmanager
def lightning_info_off() -> Iterator[None]:
    """Within it, Lightning's info lines (device banners, tips) are not shown: for checks that
    build Trainers, so that a refusal stays the only line on stderr."""
    logs = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
