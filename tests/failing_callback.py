"""A callback that fails one fold, for the fold-parallel failure test."""

import lightning as L


class FailOnFold(L.Callback):
    """Raises at the start of training of the fold whose logger version is ``fold_<fold>``."""

    def __init__(self, fold: int = 1) -> None:
        self.fold = fold

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger.version == f"fold_{self.fold}":
            raise RuntimeError(f"injected failure in fold {self.fold}")
