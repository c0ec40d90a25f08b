"""The K-fold DataModule: folds as index sets into one copy of the data, device-resident batches.

The images are loaded once per run, kept once as uint8 (or float32 for data that are not
0-255 integers), and moved to the training device once; a fold is only a pair of index
tensors into them. Each epoch draws one permutation on the device and yields index-sliced
batches, scaled to float per batch: no per-image ``__getitem__``, no collate, no workers.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lit_cnn.cv.malloc import release_free_memory
from lit_cnn.data.loading import ImageData, load_images, to_float


class IndexBatches:
    """An iterable of batches sliced by index from device-resident tensors.

    Evaluation batches are ``(images, labels)``, training batches
    ``(images, labels, loss_weight)``; ``loss_weight`` is 1 except under DDP (see
    ``__iter__``).

    Lightning accepts any iterable with ``__len__`` as a dataloader, so this replaces a
    DataLoader. Under DDP every rank draws the same permutation (same generator seed) and
    takes its own slice of each global batch, so ``batch_size`` is the global batch.

    Args:
        images: (N, 1, S, S) stored images, S = 28 or 32 (see ImageData), uint8 or float32,
            on the training device.
        labels: (N,) int64 labels on the same device.
        indices: (n,) int64 indices of the samples to serve, on the same device.
        batch_size: Global batch size (summed over ranks).
        scale: Scaling constant passed to :func:`lit_cnn.data.loading.to_float`.
        shuffle: Draw a new permutation each epoch (training); else serve in order.
        seed: Seed of the permutations (each epoch's is derived from it and the epoch).
        rank: This process's rank among ``world_size`` ranks.
        world_size: Number of data-parallel ranks.
        epoch_fn: Returns the current epoch (the Trainer's, so a resumed fit draws the same
            permutations as an uninterrupted one); ``None`` counts the epochs served.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        batch_size: int,
        scale: float,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.epoch_fn = epoch_fn
        self.batch_size, self.scale, self.shuffle = batch_size, scale, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _order(self) -> Tensor:
        if not self.shuffle:
            return self.indices
        # The generator lives on the CPU so the permutation is identical on every device
        # kind; one (n,) int64 copy to the device per epoch is negligible.
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.indices), generator=gen).to(self.indices.device)
        return self.indices[perm]

    def __len__(self) -> int:
        if self.shuffle:
            # Training: every rank must take the same number of steps (DDP all-reduces each).
            return -(-len(self.indices) // self.batch_size)
        # Evaluation: this rank's contiguous share, in batches.
        return -(-len(self._share(self.indices)) // self.batch_size)

    def _share(self, order: Tensor) -> Tensor:
        # Contiguous near-equal shares: every sample goes to exactly one rank, none padded.
        return order.tensor_split(self.world_size)[self.rank]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = self._order()
        self.epoch += 1
        if self.shuffle:
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                weight = 1.0
                if self.world_size > 1:
                    n_global = len(idx)
                    idx = idx.tensor_split(self.world_size)[self.rank]
                    # DDP averages the ranks' gradients; shares of unequal size (a last batch
                    # that does not divide) get this weight so the average is the gradient of
                    # the global batch's mean loss, as on one device.
                    weight = len(idx) * self.world_size / n_global
                yield to_float(self.images[idx], self.scale), self.labels[idx], weight
        else:
            share = self._share(order)
            for start in range(0, len(share), self.batch_size):
                idx = share[start : start + self.batch_size]
                yield to_float(self.images[idx], self.scale), self.labels[idx]


class KFoldDataModule(L.LightningDataModule):
    """K folds of a notebook-format MNIST pickle (or the bundled sample) for Lightning.

    Set :attr:`fold` to choose which fold ``train_dataloader`` and ``val_dataloader`` serve;
    ``test_dataloader`` always serves the whole test set, which is never split.

    Args:
        path: A notebook-format pickle; ``None`` uses ``Datasets/mnist.pkl`` when it exists,
            else the bundled sample; ``"sample"`` names the sample.
        k: Number of folds (at least 2).
        batch_size: Training batch size (the global batch under DDP).
        seed: Seed of the fold split and of the batch order.
        stratified: Use ``StratifiedKFold`` (same class mix in every fold) instead of ``KFold``.
        eval_batch_size: Batch size of validation and test passes; larger ones raise the
            peak memory of a run by the activations they hold.
    """

    def __init__(
        self,
        path: str | None = None,
        k: int = 3,
        batch_size: int = 128,
        seed: int = 0,
        stratified: bool = False,
        eval_batch_size: int = 256,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("k", k, 2),
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
        ):
            if value < low:
                raise ValueError(f"data.{name} must be at least {low}, got {value}")
        self.save_hyperparameters()
        self.path, self.k, self.batch_size, self.seed = path, k, batch_size, seed
        self.stratified, self.eval_batch_size = stratified, eval_batch_size
        self.fold = 0
        self._data: ImageData | None = None
        self._folds: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._device_data: tuple[torch.device, Tensor, Tensor, Tensor, Tensor] | None = None

    #: Loaded data by path, shared by every DataModule of the process while not None (see
    #: :func:`share_loaded_data`): a tuning worker loads its data once for all its trials.
    shared: dict[str | None, ImageData] | None = None

    @property
    def data(self) -> ImageData:
        """The loaded images and labels (loaded on first use, then kept)."""
        if self._data is None:
            shared = KFoldDataModule.shared
            if shared is not None and self.path in shared:
                self._data = shared[self.path]
            else:
                self._data = load_images(self.path)
                release_free_memory()  # the file's buffers, freed after loading
                if shared is not None:
                    shared[self.path] = self._data
        return self._data

    @property
    def source(self) -> str:
        """Where the data came from: a file path or ``"sample"``."""
        return str(self.data.source)

    @property
    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(train_indices, val_indices)`` of each fold, into the training set."""
        if self._folds is None:
            from sklearn.model_selection import KFold, StratifiedKFold

            y = self.data.y_train.numpy()
            limit, what = len(y), "the number of training images"
            if self.stratified:
                limit, what = int(np.bincount(y).min()), "the size of the smallest class"
            if self.k > limit:
                raise ValueError(
                    f"--data.k: invalid value {self.k}; expected at most {what} "
                    f"({limit} in {self.source})"
                )
            splitter_cls = StratifiedKFold if self.stratified else KFold
            splitter = splitter_cls(self.k, shuffle=True, random_state=self.seed)
            self._folds = list(splitter.split(np.zeros(len(y)), y))
        return self._folds

    def free_data(self) -> None:
        """Drops the loaded images and labels and their device copy; the folds stay.

        The next use of :attr:`data` loads the file again.
        """
        self._data = None
        self._device_data = None
        gc.collect()  # a finished fit's Trainer may still reach them through a cycle
        release_free_memory()

    def device_data(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The stored train and test tensors on ``device``, moved there once per run."""
        if self._device_data is None or self._device_data[0] != device:
            d = self.data
            self._device_data = (
                device,
                *(t.to(device) for t in (d.x_train, d.y_train, d.x_test, d.y_test)),
            )
        return self._device_data[1:]

    @property
    def device_data_device(self) -> torch.device:
        """The device the data were last moved to (the CPU before any)."""
        return self._device_data[0] if self._device_data is not None else torch.device("cpu")

    def _device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _ranks(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _batches(self, split: str, shuffle: bool) -> IndexBatches:
        device = self._device()
        x_train, y_train, x_test, y_test = self.device_data(device)
        rank, world = self._ranks()
        if split == "test":
            images, labels = x_test, y_test
            indices = torch.arange(len(y_test), device=device)
        else:
            images, labels = x_train, y_train
            train_idx, val_idx = self.folds[self.fold]
            indices = torch.as_tensor(train_idx if split == "train" else val_idx, device=device)
        return IndexBatches(
            images,
            labels,
            indices,
            self.batch_size if shuffle else self.eval_batch_size,
            self.data.scale,
            shuffle=shuffle,
            seed=self.seed * 1000 + self.fold,
            rank=rank,
            world_size=world,
            epoch_fn=(lambda: self.trainer.current_epoch) if self.trainer is not None else None,
        )

    def train_dataloader(self) -> IndexBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> IndexBatches:
        return self._batches("val", shuffle=False)

    def test_dataloader(self) -> IndexBatches:
        return self._batches("test", shuffle=False)


@contextlib.contextmanager
def share_loaded_data() -> Iterator[None]:
    """Within it, every DataModule reads a given path once per process, then shares it.

    The shared images are read-only to the fold loop (batches are index slices of them).
    """
    previous = KFoldDataModule.shared
    KFoldDataModule.shared = {} if previous is None else previous
    try:
        yield
    finally:
        KFoldDataModule.shared = previous
