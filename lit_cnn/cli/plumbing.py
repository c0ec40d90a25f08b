"""What every command shares around its run: ``--resume``, signals, and the run directory
that DDP ranks and torchrun processes must agree on."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from jsonargparse import Namespace

from lit_cnn.errors import UsageError

T = TypeVar("T")


def fail(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` on stderr; returns exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


# Options that may accompany --resume: they change how a run looks, not its results.
RESUME_ALLOWED = ("--trainer.enable_progress_bar",)


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler (a SystemExit, so nothing swallows it)."""


_signal_received: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _signal_received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Terminated(128 + signum)


def split_resume(argv: list[str], what: str = "run") -> tuple[str | None, list[str]]:
    """Takes ``--resume DIR`` out of ``argv``; refuses options that would change the results.

    Args:
        argv: Command-line arguments.
        what: What is resumed ("run", "comparison"), for the messages.
    """
    resume, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--resume" or arg.startswith("--resume="):
            if "=" in arg:
                resume = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                resume, i = argv[i + 1], i + 1
            else:
                raise UsageError(f"--resume needs a {what} directory")
        else:
            rest.append(arg)
        i += 1
    if resume is None:
        return None, argv
    for arg in rest:
        name = arg.split("=", 1)[0]
        if name.startswith("-") and name not in RESUME_ALLOWED:
            raise UsageError(
                f"--resume continues the {what} with its saved configuration; {name} would "
                "change its results (only --trainer.enable_progress_bar may be given)"
            )
    return resume, rest


def run_interruptibly(
    work: Callable[[], T], prog: str, resume_command: str
) -> tuple[T | None, int | None]:
    """Runs ``work`` so that SIGINT and SIGTERM end it with a resume hint.

    Returns:
        ``(result, None)``, or ``(None, 130 or 143)`` when a signal stopped it.
    """
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    _signal_received.clear()
    try:
        return work(), None
    except (KeyboardInterrupt, SystemExit):
        if not _signal_received:
            raise
        signum = _signal_received[0]
        print(
            f"{prog}: interrupted by {signal.Signals(signum).name}; finished folds and each "
            f"fold's last checkpoint are kept. Resume with:\n  {resume_command}",
            file=sys.stderr,
        )
        return None, 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resume_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {path}: no such directory")
    if not (run_dir / CONFIG).is_file() or not (run_dir / "folds.json").is_file():
        raise UsageError(
            f"--resume {path}: not a run directory (it has no {CONFIG} and folds.json)"
        )
    return run_dir


CONFIG = "config.yaml"
RUN_DIR_ENV = "LIT_CNN_RUN_DIR"


def ddp_run_dir(cfg: Namespace, model_name: str) -> Path | str | None:
    """The run directory of a DDP rank other than 0, or None on rank 0 and single runs.

    Children of Lightning's DDP launcher inherit it in ``LIT_CNN_RUN_DIR``. Ranks started
    by torchrun or srun share no parent, so they meet in the directory ``--run_name`` names,
    made by rank 0.
    """
    from lightning.fabric.utilities.rank_zero import _get_rank

    rank = _get_rank()
    if not rank:
        return None
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if not cfg.run_name:
        return "under torchrun or srun with DDP, give --run_name so every rank finds the run"
    run_dir = Path(cfg.trainer.default_root_dir or ".") / "lightning_logs" / model_name
    run_dir = run_dir / cfg.run_name
    for _ in range(600):  # rank 0 makes it within seconds
        if (run_dir / CONFIG).is_file():
            return run_dir
        time.sleep(0.5)
    return f"rank {rank}: run directory {run_dir} did not appear"
