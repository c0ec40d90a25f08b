"""The architectures, parametrised over the registry: a new one is tested without new code."""

import pytest
import torch
import torch.nn.functional as F
from architectures import EXPECTED

import lit_cnn
from lit_cnn.models.modules import CNNModule, get_model_class

NAMES = lit_cnn.list_models()


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_architecture_has_its_expectations(name):
    assert name in EXPECTED, f"{name} is registered but has no row in tests/architectures.py"


def test_every_expected_architecture_is_registered():
    assert sorted(EXPECTED) == NAMES


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'Nope'.*DeepCNN.*ShallowCNN"):
        lit_cnn.get_model("Nope")


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_is_batch_by_10(name):
    model = lit_cnn.get_model(name).eval()
    assert model(torch.rand(5, 1, 32, 32)).shape == (5, 10)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    model = lit_cnn.get_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name]["params"]


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = lit_cnn.get_model(name)
    loss = F.cross_entropy(model(torch.rand(8, 1, 32, 32)), torch.arange(8))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_the_sample(name, sample_batch):
    x, y = sample_batch
    torch.manual_seed(0)
    model = lit_cnn.get_model(name)
    opt = model.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_logits_by_default_softmax_on_request(name):
    x = torch.rand(4, 1, 32, 32)
    logits = lit_cnn.get_model(name).eval()(x)
    assert not torch.allclose(logits.sum(1), torch.ones(4))
    probs = lit_cnn.get_model(name, softmax_output=True).eval()(x)
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_example_input_array_for_model_summary(name):
    model = lit_cnn.get_model(name)
    assert tuple(model.example_input_array.shape[1:]) == (1, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_defaults_per_architecture(name):
    model, want = lit_cnn.get_model(name), EXPECTED[name]
    assert (model.hparams.lr, model.hparams.l2, model.hparams.optimizer) == (
        want["lr"], want["l2"], "adam"
    )  # fmt: skip
    assert model.channels_last == want["channels_last"]


@pytest.mark.parametrize("optimizer,cls", [("adam", torch.optim.Adam), ("sgdm", torch.optim.SGD)])
def test_both_optimizers_apply_l2(optimizer, cls):
    opt = lit_cnn.get_model("DeepCNN", optimizer=optimizer, l2=0.05, lr=0.1).configure_optimizers()
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["weight_decay"] == 0.05 and group["lr"] == 0.1
    if optimizer == "sgdm":
        assert group["momentum"] == 0.9


@pytest.mark.parametrize("optimizer", ["adam", "sgdm"])
def test_fused_optimizer_takes_the_same_steps(optimizer, sample_batch):
    # fused=None picks the fused kernel on the CPU; its updates match the per-op version's.
    x, y = sample_batch[0][:64], sample_batch[1][:64]
    models = []
    for fused in (None, False):
        torch.manual_seed(0)
        model = lit_cnn.get_model("ResNN", optimizer=optimizer, lr=0.01, l2=0.01, fused=fused)
        opt = model.configure_optimizers()
        assert opt.defaults["fused"] is (fused is None)
        start = model.net[0].weight.detach().clone()
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        models.append(model)
    for p_fused, p_plain in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p_fused, p_plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(models[0].net[0].weight, start)  # the steps did move it


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'.*adam, sgdm"):
        lit_cnn.get_model("DeepCNN", optimizer="rmsprop")


def test_skip_block_changes_the_function():
    # The skip net differs from NoSkip by the shortcut only: zeroing it gives NoSkip's function.
    skip = get_model_class("ResNNBatch_Skip")().eval()
    block = skip.net[4]
    x = torch.rand(3, 6, 15, 15)
    with_shortcut = block(x)
    torch.nn.init.zeros_(block.shortcut[0].weight)
    torch.nn.init.zeros_(block.shortcut[0].bias)
    torch.nn.init.zeros_(block.shortcut[1].bias)
    without = block(x)
    assert not torch.allclose(with_shortcut, without)
    assert torch.allclose(without, block.relu(block.bn(block.conv(x))))


def test_base_class_builds_nothing():
    # No layers in lit_cnn.models.nets under its name: the error lists the architectures that have.
    with pytest.raises(ValueError, match="unknown model 'CNNModule'; valid models: DeepCNN"):
        CNNModule()


def test_epoch_train_metrics_are_the_steps_mean_loss_and_accuracy(sample_batch):
    # The running sums logged as train/loss and train/acc must equal the mean over the
    # epoch's steps, replayed by hand from the same weights over the same batches.
    import lightning as L

    from lit_cnn.cv.datamodule import IndexBatches

    x, y = sample_batch
    images = (x * 255).round().to(torch.uint8)

    def batches():
        return IndexBatches(images, y, torch.arange(len(y)), 64, 255.0, shuffle=True, seed=3)

    torch.manual_seed(0)
    model = lit_cnn.get_model("ResNN")
    torch.manual_seed(0)
    replay = lit_cnn.get_model("ResNN")
    opt = replay.configure_optimizers()
    losses, correct = [], 0
    for xb, yb, _ in batches():
        out = replay(xb)
        loss = F.cross_entropy(out, yb)
        losses.append(loss.item() * len(yb))
        correct += (out.argmax(1) == yb).sum().item()
        opt.zero_grad()
        loss.backward()
        opt.step()

    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=batches())
    record = model.history[0]
    assert record["train/loss"] == pytest.approx(sum(losses) / len(y), rel=1e-5)
    assert record["train/acc"] == pytest.approx(correct / len(y), abs=1e-7)
    assert not model.diverged
    # Lightning's automatic optimization takes the replay's steps: the same weights at the end.
    for p_lit, p_replay in zip(model.parameters(), replay.parameters(), strict=True):
        torch.testing.assert_close(p_lit, p_replay)


@pytest.mark.parametrize("name", lit_cnn.list_models())
def test_channels_last_computes_the_same_function(name, sample_batch):
    torch.manual_seed(0)
    nhwc = lit_cnn.get_model(name, channels_last=True).eval()
    nchw = lit_cnn.get_model(name, channels_last=False).eval()
    nchw.load_state_dict(nhwc.state_dict())
    for p in nhwc.parameters():
        if p.ndim == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
    # The default is the architecture's measured choice; an explicit value overrides it.
    cls = lit_cnn.get_model_class(name)
    assert lit_cnn.get_model(name).channels_last is cls.channels_last_default
    assert nchw.channels_last is False and nhwc.channels_last is True
    x = sample_batch[0][:32]
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), nchw(x), atol=1e-5, rtol=1e-4)
