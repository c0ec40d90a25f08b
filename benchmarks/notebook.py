"""The homework notebook's training code, re-implemented as the benchmark's baseline.

This is "the notebook's way" of training, kept so that ``benchmarks/bench.py`` can measure what
lit_cnn gains over it on the same machine. It does what the notebook's ``MnistDataset``,
``Trainer`` and ``KFoldCrossValidation`` did, at the same cost:

- a map-style dataset of float tensors (images divided by their max) behind a ``DataLoader``
  (batch 128, shuffled): one ``__getitem__`` per image and a collate per batch;
- after every training epoch, a second pass over the **whole training set** and one over the
  validation set, each a shuffled ``DataLoader`` pass that reads ``.item()`` per batch;
- the weights of the epoch with the lowest validation loss kept and restored at the end;
- unseeded ``KFold(k, shuffle=True)`` and a fresh model per fold, then mean +/- std.

Where it differs from the notebook, it does so without changing the cost:

- The networks are lit_cnn's own layers (:mod:`lit_cnn.models.nets`, plain ``nn.Sequential``s that
  need no Lightning) so both sides train identical layers. They output logits; the notebook
  ended in Softmax, which fed probabilities to ``CrossEntropyLoss`` (a bug, and a negligible cost).
- The best weights are copied (``copy.deepcopy`` of the ``state_dict``), where the notebook kept
  references to the live tensors and so restored the last epoch's weights. The copy costs about
  a millisecond per improving epoch.
- No tqdm bars and no loss/accuracy plots: the notebook drew curves with matplotlib, but drawing
  is not what the benchmark compares (leaving it out only flatters the baseline).

Run it as the notebook's K-fold cell::

    python benchmarks/notebook.py --model ShallowCNN --data /tmp/fmnist.pkl --k 3 --epochs 2

The data file is read by lit_cnn's restricted unpickler (:func:`lit_cnn.data.loading.read_pickle`),
where the notebook called plain ``pickle.load``: the same bytes read, without running what a
hostile file names.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lit_cnn.data.loading import read_pickle
from lit_cnn.models.nets import TRAINING_DEFAULTS, build_net


class MnistDataset:
    """The notebook's map-style dataset: one ``(image, label)`` pair per ``__getitem__``.

    Args:
        X: Float images (N, 1, 32, 32), on any device.
        y: Integer labels (N,), on the same device.
    """

    def __init__(self, X: Tensor, y: Tensor) -> None:
        self.X = X
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        return self.X[idx], self.y[idx]


class Trainer:
    """The notebook's hand-written training loop.

    Args:
        model: The network; its output goes straight into ``CrossEntropyLoss``.
        opt_method: ``"adam"`` (Adam with ``weight_decay=l2``) or ``"sgdm"`` (SGD, momentum
            0.9, no weight decay: the notebook ignored ``l2`` there).
        learning_rate: Learning rate.
        batch_size: Batch size of every DataLoader (training and evaluation).
        epoch: Number of training epochs.
        l2: Adam's weight decay.

    Raises:
        NotImplementedError: An unknown ``opt_method``, as in the notebook.
    """

    def __init__(
        self,
        model: nn.Module,
        opt_method: str,
        learning_rate: float,
        batch_size: int,
        epoch: int,
        l2: float,
    ) -> None:
        self.model = model
        self.optimizer: torch.optim.Optimizer
        if opt_method == "sgdm":
            self.optimizer = torch.optim.SGD(model.parameters(), learning_rate, momentum=0.9)
        elif opt_method == "adam":
            self.optimizer = torch.optim.Adam(model.parameters(), learning_rate, weight_decay=l2)
        else:
            raise NotImplementedError("This optimization is not supported")
        self.epoch = epoch
        self.batch_size = batch_size
        self.loss_func = nn.CrossEntropyLoss()

    def loader(self, data: MnistDataset) -> DataLoader:
        """A shuffled DataLoader over ``data``, as every pass of the notebook built one."""
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def train_epoch(self, loader: DataLoader) -> None:
        """One pass of zero_grad / backward / step over ``loader``: the timed part."""
        self.model.train()
        for X_batch, y_batch in loader:
            batch_loss = self.loss_func(self.model(X_batch), y_batch)
            self.optimizer.zero_grad()
            batch_loss.backward()
            self.optimizer.step()

    def train(
        self, train_data: MnistDataset, val_data: MnistDataset, early_stop: bool = True
    ) -> dict[str, Any]:
        """Trains for ``epoch`` epochs, evaluating train and validation sets after each.

        Args:
            train_data: The training set.
            val_data: The validation set.
            early_stop: Keep the weights of the epoch with the lowest validation loss and
                restore them at the end.

        Returns:
            Per-epoch ``train_loss_list``, ``train_acc_list``, ``val_loss_list`` and
            ``val_acc_list``, and ``seconds``, the wall time of the whole call.
        """
        start = time.time()
        train_loader = self.loader(train_data)
        history: dict[str, Any] = {
            "train_loss_list": [],
            "train_acc_list": [],
            "val_loss_list": [],
            "val_acc_list": [],
        }
        weights = copy.deepcopy(self.model.state_dict())
        lowest_val_loss = np.inf
        for _ in range(self.epoch):
            self.train_epoch(train_loader)
            # The notebook's second pass over the whole training set (its defect 6).
            train_loss, train_acc = self.evaluate(train_data)
            history["train_loss_list"].append(train_loss)
            history["train_acc_list"].append(train_acc)
            val_loss, val_acc = self.evaluate(val_data)
            history["val_loss_list"].append(val_loss)
            history["val_acc_list"].append(val_acc)
            if early_stop and val_loss < lowest_val_loss:
                lowest_val_loss = val_loss
                # A real copy: the notebook kept references, so it restored the last epoch.
                weights = copy.deepcopy(self.model.state_dict())
        if early_stop:
            self.model.load_state_dict(weights)
        history["seconds"] = time.time() - start
        return history

    def evaluate(self, data: MnistDataset) -> tuple[float, float]:
        """Loss and accuracy over ``data``, weighted by batch size.

        Like the notebook, a shuffled DataLoader pass with one ``.item()`` host read per batch
        for each of loss and accuracy.

        Args:
            data: The set to evaluate.

        Returns:
            ``(loss, accuracy)``.
        """
        self.model.eval()
        acc, loss = 0.0, 0.0
        for X_batch, y_batch in self.loader(data):
            with torch.no_grad():
                batch_importance = y_batch.shape[0] / len(data)
                y_pred = self.model(X_batch)
                batch_loss = self.loss_func(y_pred, y_batch)
                batch_acc = torch.sum(torch.argmax(y_pred, dim=-1) == y_batch) / y_batch.shape[0]
                acc += batch_acc.detach().cpu().item() * batch_importance
                loss += batch_loss.detach().cpu().item() * batch_importance
        return loss, acc


def kfold_cross_validation(
    model_class: Callable[..., nn.Module],
    k: int,
    X_train: Tensor,
    y_train: Tensor,
    X_test: Tensor,
    y_test: Tensor,
    opt_method: str = "adam",
    learning_rate: float = 2e-3,
    batch_size: int = 128,
    epoch: int = 50,
    l2: float = 0.0,
    early_break: bool = False,
    *,
    seed: int | None = None,
    log: Callable[[str], None] = print,
    **model_args: Any,
) -> dict[str, Any]:
    """The notebook's ``KFoldCrossValidation``: K folds, a fresh model each, then mean +/- std.

    The model is built on the device the data live on (the notebook moved the data to its
    ``device`` beforehand).

    Args:
        model_class: Builds a fresh network from ``**model_args``.
        k: Number of folds.
        X_train: Training images, float (N, 1, 32, 32).
        y_train: Training labels (N,).
        X_test: Test images, float.
        y_test: Test labels.
        opt_method: ``"adam"`` or ``"sgdm"``.
        learning_rate: Learning rate.
        batch_size: Batch size.
        epoch: Epochs per fold.
        l2: Adam's weight decay.
        early_break: Stop after the first fold.
        seed: ``random_state`` of the split; ``None`` (the notebook's) draws a new split.
        log: Where the notebook's printed lines go.
        **model_args: Passed to ``model_class``.

    Returns:
        ``train_acc`` (each fold's training accuracy at its best epoch), ``test_acc``,
        ``seconds`` (each fold's training wall time), and the ``*_mean``/``*_std`` of both
        accuracies.
    """
    from sklearn.model_selection import KFold

    test_data = MnistDataset(X_test, y_test)
    kf = KFold(n_splits=k, shuffle=True, random_state=seed)
    train_acc_list: list[float] = []
    test_acc_list: list[float] = []
    seconds: list[float] = []
    for i, (train_index, val_index) in enumerate(kf.split(X_train.cpu().numpy())):
        log(f"Fold {i}:")
        train_data = MnistDataset(X_train[train_index], y_train[train_index])
        val_data = MnistDataset(X_train[val_index], y_train[val_index])
        model = model_class(**model_args).to(X_train.device)
        trainer = Trainer(model, opt_method, learning_rate, batch_size, epoch, l2)
        res = trainer.train(train_data, val_data)
        log(f"func: train took: {res['seconds']:.4f} sec")
        train_acc_best = res["train_acc_list"][int(np.argmin(res["val_loss_list"]))]
        _, test_acc = trainer.evaluate(test_data)
        train_acc_list.append(train_acc_best)
        test_acc_list.append(test_acc)
        seconds.append(res["seconds"])
        log(f"Training accuracy: {train_acc_best}")
        log(f"Test accuracy: {test_acc}")
        if early_break:
            break
    result = {
        "train_acc": train_acc_list,
        "test_acc": test_acc_list,
        "seconds": seconds,
        "train_acc_mean": float(np.mean(train_acc_list)),
        "train_acc_std": float(np.std(train_acc_list)),
        "test_acc_mean": float(np.mean(test_acc_list)),
        "test_acc_std": float(np.std(test_acc_list)),
    }
    if not early_break:
        log("Final results:")
        log(f"Training accuracy: {result['train_acc_mean']}+/-{result['train_acc_std']}")
        log(f"Test accuracy: {result['test_acc_mean']}+/-{result['test_acc_std']}")
    return result


def notebook_net(name: str) -> nn.Module:
    """The plain ``nn.Sequential`` of lit_cnn's architecture ``name``: logits out,
    channels-first as the notebook's networks were (channels-last is lit_cnn's option)."""
    return build_net(name)


def load_notebook_pickle(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loads a notebook-format pickle as the notebook did, through the safe unpickler.

    The pickle's arrays, ``torch.tensor(..., dtype=float)``, a channel axis,
    then each image set divided by its own max (the notebook's defect 3, kept: same cost).

    Args:
        path: A pickle of ``((X_train, y_train), (X_test, y_test))``.
        device: Where the tensors go (the notebook moved them to its GPU).

    Returns:
        ``(X_train, y_train, X_test, y_test)``: float32 (N, 1, 32, 32) images, int64 labels.
    """
    train_data, test_data = read_pickle(path)
    tensors = []
    for X, y in (train_data, test_data):
        images = torch.tensor(X, dtype=torch.float)
        if images.ndim == 3:  # (N, 32, 32) as the notebook's file held them
            images = images.unsqueeze(1)
        images /= torch.max(images)
        tensors += [images.to(device), torch.tensor(y, dtype=torch.long).to(device)]
    X_train, y_train, X_test, y_test = tensors
    return X_train, y_train, X_test, y_test


def main(argv: list[str] | None = None) -> int:
    """The notebook's K-fold cell as a command.

    Args:
        argv: Command-line arguments; ``None`` takes ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python benchmarks/notebook.py",
        description="K-fold cross-validation the homework notebook's way (benchmark baseline).",
    )
    parser.add_argument("--model", default="ShallowCNN", choices=sorted(TRAINING_DEFAULTS))
    parser.add_argument("--data", required=True, help="notebook-format pickle (trusted)")
    parser.add_argument("--k", type=int, default=3, help="number of folds")
    parser.add_argument("--epochs", type=int, default=50, help="epochs per fold")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--opt", choices=("adam", "sgdm"), default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: the model's own")
    parser.add_argument("--l2", type=float, default=None, help="default: the model's own")
    parser.add_argument("--early-break", action="store_true", help="train only fold 0")
    parser.add_argument("--seed", type=int, default=None, help="KFold random_state")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available, as the notebook)",
    )
    args = parser.parse_args(argv)

    # What the notebook's first cell imported, so that start-up costs what the notebook's did.
    import matplotlib.pyplot  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import tqdm  # noqa: F401

    defaults = TRAINING_DEFAULTS[args.model]
    lr = defaults["lr"] if args.lr is None else args.lr
    l2 = defaults["l2"] if args.l2 is None else args.l2

    X_train, y_train, X_test, y_test = load_notebook_pickle(args.data, args.device)
    kfold_cross_validation(
        lambda: notebook_net(args.model),
        args.k,
        X_train,
        y_train,
        X_test,
        y_test,
        opt_method=args.opt,
        learning_rate=lr,
        batch_size=args.batch_size,
        epoch=args.epochs,
        l2=l2,
        early_break=args.early_break,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
