"""Process start-up: load torch and Lightning with the cyclic garbage collector paused, and
turn signals into one line until a run installs its own handlers.

Importing the CLI brings in torch, Lightning and what they import: hundreds of thousands of
objects that live as long as the process. With the collector on, Python scans the growing
heap again and again while they load, and none of it is garbage yet (timings:
docs/performance.md).

    with collector_paused():
        from lit_cnn.cli.kfold import cli_main
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Turns the cyclic garbage collector off for the block, then freezes what it created.

    On exit everything alive is moved out of the collector's generations (``gc.freeze``),
    so later collections do not scan the imported modules, and the collector is switched
    back on if it was on. The few cycles the imports left unreachable stay in memory:
    collecting them would cost more than they weigh.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Frozen before the collector is back: otherwise its first pass, a few hundred
        # allocations later, would scan every object created in the block.
        gc.freeze()
        if enabled:
            gc.enable()


def exit_on_signals(prog: str) -> None:
    """Until a run installs its own handlers, SIGINT and SIGTERM end the process with one
    line and status 130 or 143, instead of a traceback from inside an import.

    Args:
        prog: The command's name, for the message.
    """
    import os
    import signal
    import sys

    def stop(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        print(f"{prog}: interrupted by {name} before the run began; nothing was written",
              file=sys.stderr, flush=True)  # fmt: skip
        # Not SystemExit: raised where the import machinery runs a callback, Python prints it
        # as ignored and the start-up goes on. Nothing is open for writing yet.
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
