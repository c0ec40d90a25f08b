"""Run directories: made once and never reused, and sealed: what ``--resume`` checks before
it continues a run.

When a run directory is made, ``seal.json`` records a hash of its config.yaml and the
configuration itself. ``--resume`` refuses a run whose config.yaml was edited since (saying
which options differ) and one whose folds.json is not the split its configuration makes; a
run whose results.json exists is finished, and is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lit_cnn.cv.files import write_json
from lit_cnn.errors import UsageError

SEAL = "seal.json"
CONFIG = "config.yaml"


def new_run_dir(root: str | Path | None, model: str, run_name: str | None = None) -> Path:
    """Creates and returns ``<root>/lightning_logs/<model>/<run_name or version_N>``.

    Never reuses a directory: ``version_N`` takes the next free N, and an existing
    ``run_name`` is an error.

    Raises:
        FileExistsError: ``run_name`` names an existing directory.
    """
    parent = Path(root or ".") / "lightning_logs" / model
    parent.mkdir(parents=True, exist_ok=True)
    if run_name:
        run_dir = parent / run_name
        run_dir.mkdir()  # FileExistsError if it exists: never overwrite a run
        return run_dir
    taken = [
        int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:  # another process took it meanwhile
            n += 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seal(run_dir: Path) -> None:
    """Records the hash and content of ``run_dir/config.yaml`` in ``run_dir/seal.json``."""
    config = run_dir / CONFIG
    write_json(
        run_dir / SEAL,
        {"config_sha256": _sha256(config), "config": yaml.safe_load(config.read_text())},
    )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _differences(before: Any, after: Any) -> list[str]:
    old, new = _flat(before), _flat(after)
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: Path, folds: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Refuses to continue a run whose configuration or split changed since it began.

    Args:
        run_dir: The run directory given to ``--resume``.
        folds: ``(train, val)`` indices of each fold, as the saved configuration makes them.

    Raises:
        UsageError: What differs, in one line.
    """
    sealed = run_dir / SEAL
    if sealed.is_file():
        record = json.loads(sealed.read_text())
        if _sha256(run_dir / CONFIG) != record["config_sha256"]:
            try:
                now = yaml.safe_load((run_dir / CONFIG).read_text())
                diff = _differences(record["config"], now)
            except yaml.YAMLError:
                diff = []
            what = "; ".join(diff[:3]) + (" ..." if len(diff) > 3 else "") if diff else "its text"
            raise UsageError(
                f"--resume {run_dir}: config.yaml was changed since the run began ({what}); "
                "restore it, or start a new run with --config"
            )
    saved = run_dir / "folds.json"
    if saved.is_file():
        val_indices = json.loads(saved.read_text()).get("val_indices", [])
        made = [v.tolist() for _, v in folds]
        if len(val_indices) != len(made):
            raise UsageError(
                f"--resume {run_dir}: folds.json holds {len(val_indices)} folds, the "
                f"configuration makes {len(made)}"
            )
        for i, (a, b) in enumerate(zip(val_indices, made, strict=True)):
            if a != b:
                raise UsageError(
                    f"--resume {run_dir}: folds.json differs from the split its configuration "
                    f"makes (fold {i}'s validation indices)"
                )


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` is complete (its report writes results.json last)."""
    return (run_dir / "results.json").is_file()
