"""The K-fold DataModule and its device-resident, index-sliced batches."""

import numpy as np
import pytest
import torch

from lit_cnn.cv.datamodule import IndexBatches, KFoldDataModule
from lit_cnn.data.loading import load_dataset, load_images
from lit_cnn.models.modules import get_model


def _batches(n=1000, batch_size=128, shuffle=True, rank=0, world=1, seed=0):
    # float images: uint8 could not hold an index past 255
    images = torch.arange(n, dtype=torch.float32).repeat_interleave(1024).view(n, 1, 32, 32)
    labels = torch.arange(n) % 10
    return IndexBatches(
        images, labels, torch.arange(n), batch_size, 1.0, shuffle, seed, rank, world
    )


def test_an_epoch_visits_every_image_once():
    loader = _batches(n=1000, batch_size=128)
    seen = torch.cat(list(_index_batches(loader)))
    assert sorted(seen.tolist()) == list(range(1000))
    sizes = [len(b) for b in _index_batches(loader)]
    assert sizes == [128] * 7 + [1000 - 7 * 128] and len(loader) == 8


def test_evaluation_metrics_are_means_over_images(tiny_pkl):
    # The 200 validation images in batches of 32 leave a short last one (8 images), which must
    # weigh 8/200, not as much as a full batch.
    torch.manual_seed(0)
    model = get_model("ResNNBatch").eval()
    results = []
    for eval_batch_size in (32, 200):
        dm = KFoldDataModule(path=str(tiny_pkl), k=3, eval_batch_size=eval_batch_size)
        with torch.no_grad():
            for batch in dm.val_dataloader():
                model._step(batch, "val")
        results.append({k: float(v) for k, v in model._epoch_metrics("val").items()})
    x, y = load_dataset(tiny_pkl)[:2]
    idx = torch.as_tensor(dm.folds[0][1])
    assert len(idx) == 200
    with torch.no_grad():
        out = model(x[idx])
    expected_loss = float(torch.nn.functional.cross_entropy(out, y[idx]))
    expected_acc = float((out.argmax(1) == y[idx]).float().mean())
    for res in results:
        assert res["val/loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert res["val/acc"] == pytest.approx(expected_acc)


def _index_batches(loader):
    # Recover indices from the images: image i holds the value i everywhere.
    for batch in loader:
        yield (batch[0][:, 0, 0, 0] * loader.scale).round().long()


def test_each_epoch_draws_a_new_permutation_reproducibly():
    a, b = _batches(seed=3), _batches(seed=3)
    first_a, second_a = (torch.cat(list(_index_batches(a))) for _ in range(2))
    first_b = torch.cat(list(_index_batches(b)))
    assert torch.equal(first_a, first_b)
    assert not torch.equal(first_a, second_a)


def test_ranks_split_each_global_batch():
    shares = [list(_index_batches(_batches(n=1000, rank=r, world=2))) for r in range(2)]
    # The last global batch (1000 = 7 * 128 + 104) splits 52/52; weights make DDP's average
    # of the shares' mean losses the global batch's mean loss.
    last = [list(_batches(n=1003, rank=r, world=2))[-1] for r in range(2)]
    assert [len(b[1]) for b in last] == [54, 53]
    assert [b[2] for b in last] == pytest.approx([54 * 2 / 107, 53 * 2 / 107])
    whole = list(_index_batches(_batches(n=1000)))
    assert len(shares[0]) == len(shares[1]) == len(whole)
    for b0, b1, full in zip(*shares, whole, strict=True):
        assert torch.equal(torch.cat([b0, b1]), full)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_counts_each_image_exactly_once(world):
    seen = torch.cat(
        [
            idx
            for r in range(world)
            for idx in _index_batches(
                _batches(n=1001, batch_size=100, shuffle=False, rank=r, world=world)
            )
        ]
    )
    assert sorted(seen.tolist()) == list(range(1001))


def test_batches_scale_like_load_dataset(tiny_pkl):
    x_float, _, _, _ = load_dataset(tiny_pkl)
    dm = KFoldDataModule(path=str(tiny_pkl), k=3, batch_size=50)
    assert dm.data.x_train.dtype == torch.uint8  # kept once, compact
    x, y = next(iter(dm.val_dataloader()))
    _, val_idx = dm.folds[0]
    assert torch.equal(x, x_float[torch.as_tensor(val_idx[: len(x)])])
    assert torch.equal(y, dm.data.y_train[torch.as_tensor(val_idx[: len(x)])])


@pytest.mark.parametrize("stratified", [False, True])
def test_folds_are_disjoint_and_cover_the_training_set(tiny_pkl, stratified):
    dm = KFoldDataModule(path=str(tiny_pkl), k=3, stratified=stratified)
    vals = [v for _, v in dm.folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(600))
    for train, val in dm.folds:
        assert not set(train) & set(val)
        assert len(train) + len(val) == 600
    if stratified:
        y = dm.data.y_train.numpy()
        counts = np.array([np.bincount(y[v], minlength=10) for v in vals])
        assert (counts.max(axis=0) - counts.min(axis=0)).max() <= 1


def test_folds_depend_on_the_seed_only(tiny_pkl):
    a = KFoldDataModule(path=str(tiny_pkl), seed=1).folds
    b = KFoldDataModule(path=str(tiny_pkl), seed=1).folds
    c = KFoldDataModule(path=str(tiny_pkl), seed=2).folds
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][1], c[0][1])


def test_fold_selects_the_served_indices(tiny_pkl):
    dm = KFoldDataModule(path=str(tiny_pkl), k=3, eval_batch_size=10_000)
    dm.fold = 2
    _, y = next(iter(dm.val_dataloader()))
    assert torch.equal(y, dm.data.y_train[torch.as_tensor(dm.folds[2][1])])
    assert sum(len(b[1]) for b in dm.train_dataloader()) == len(dm.folds[2][0])
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 200


def test_data_are_loaded_once_and_not_copied_per_fold(tiny_pkl):
    dm = KFoldDataModule(path=str(tiny_pkl))
    first = dm.device_data(torch.device("cpu"))
    dm.fold = 1
    again = dm.device_data(torch.device("cpu"))
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(first, again, strict=True))
    x = next(iter(dm.train_dataloader()))[0]
    assert x.dtype == torch.float32


def test_sample_loads_uint8():
    assert load_images("sample").x_train.dtype == torch.uint8


def test_freed_data_are_loaded_again_on_next_use(tiny_pkl):
    dm = KFoldDataModule(path=str(tiny_pkl), k=3)
    folds, y_test = dm.folds, dm.data.y_test.clone()
    dm.device_data(torch.device("cpu"))
    dm.free_data()
    assert dm._data is None and dm._device_data is None
    assert dm.folds is folds  # the split stays
    assert torch.equal(dm.data.y_test, y_test)
