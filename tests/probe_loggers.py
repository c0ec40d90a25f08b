"""A logger shaped like MLflow's (a store, a run name, tags), for the tracking-logger test."""

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger


class TrackingLogger(Logger):
    """Appends each run it is made for to ``save_dir/tracking.json``."""

    def __init__(
        self, save_dir: str = "./store", run_name: str | None = None, tags: dict | None = None
    ) -> None:
        super().__init__()
        self.save_dir_, self.run_name, self.tags = Path(save_dir), run_name, dict(tags or {})
        file = self.save_dir_ / "tracking.json"
        runs = json.loads(file.read_text()) if file.is_file() else []
        runs.append({"run_name": run_name, "tags": self.tags})
        self.save_dir_.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(runs))

    @property
    def name(self) -> str:
        return "tracking"

    @property
    def version(self) -> str:
        return self.run_name or "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass
