"""The benchmark and its notebook baseline: what they do, not how fast (see scripts/bench.py)."""

import json
import pickle
import subprocess
import sys

import bench
import notebook
import pytest
import torch
from conftest import ROOT

from lit_cnn.data.loading import to_float
from lit_cnn.models import nets
from lit_cnn.models.modules import get_model, list_models

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    # Behaviour, not speed, is tested here: one thread keeps these tests quick even when other
    # processes hold the cores (two threads on a busy two-core machine crawl).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_data():
    """512 training images of the bundled sample."""
    return bench.load_subset("sample", 512)


def test_benchmark_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--data", "sample", "--models", "ResNN", "--n-train", "512", "--repeats", "1"]
    more = ["--batch-size", "128", "--device", "cpu", "--threads", "1", "--json", str(out)]
    assert bench.main([*args, *more]) == 0
    printed = capsys.readouterr().out
    assert "scripts/bench.py --data sample --models ResNN" in printed
    assert "torch threads" in printed and "lightning" in printed
    row = next(line for line in printed.splitlines() if line.startswith("ResNN"))
    assert len(row.split()) >= 8  # model, three throughputs, ratios
    assert row.split()[-2:][0] == f"<={bench.target_a_b('ResNN'):.2f}"  # ResNN's own target

    report = json.loads(out.read_text())
    assert report["n_train"] == 512
    res = report["epochs"]["ResNN"]
    assert set(res["images_per_s"]) == {"a", "b", "c"}
    assert all(v > 0 for v in res["images_per_s"].values())
    assert len(res["ratio_a_b"]) == len(res["ratio_c_a"]) == 1
    assert res["median_ratio_a_b"] > 0 and res["median_ratio_c_a"] > 0
    assert [run["method"] for run in res["runs"]] == ["a", "b", "c"]
    assert report["machine"]["cores"] and report["machine"]["torch"] == torch.__version__


def test_options_benchmark_times_every_option(tmp_path, capsys, monkeypatch):
    # Each option must reach the model: record what every plain run was built with.
    seen = []
    real = bench.plain_epochs

    def spy(name, dm, device, epochs, seed, **hparams):
        seen.append((name, hparams))
        return real(name, dm, device, epochs, seed, **hparams)

    monkeypatch.setattr(bench, "plain_epochs", spy)
    out = tmp_path / "options.json"
    args = ["--data", "sample", "--models", "ShallowCNN", "DeepCNN", "--n-train", "256"]
    assert bench.main([*args, "--repeats", "2", "--options", "--json", str(out)]) == 0
    timed = [hp for name, hp in seen if name == "DeepCNN"][len(bench.OPTIONS) :]  # after warm-up
    assert timed == [hp for _ in range(2) for _, hp in bench.OPTIONS]  # alternating
    report = json.loads(out.read_text())["options"]
    for name in ("ShallowCNN", "DeepCNN"):
        res = report[name]
        assert res["NCHW"]["median_ratio"] == 1.0
        assert all(len(res[label]["seconds"]) == 2 for label, _ in bench.OPTIONS)
        assert res["default"]["channels_last"] is get_model(name).channels_last
        assert res["default"]["fused"] is True
    printed = capsys.readouterr().out
    assert next(line for line in printed.splitlines() if line.startswith("DeepCNN")).endswith(
        "NHWC+fused"
    )


def test_n_train_beyond_the_data_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--data", "sample", "--models", "ResNN", "--n-train", "999999"])
    assert exc.value.code == 2
    assert "--n-train must be between 1 and 4000" in capsys.readouterr().err


def test_options_and_whole_run_are_separate_benchmarks(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--whole-run", "--options", "--data", "sample"])
    assert exc.value.code == 2
    assert "--whole-run and --options are separate benchmarks" in capsys.readouterr().err


def test_whole_run_needs_a_data_file(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--whole-run"])
    assert "--whole-run needs --data" in capsys.readouterr().err


def test_lit_epoch_does_exactly_the_plain_loop_s_work(small_data):
    # ResNN has no BatchNorm, so one epoch from the same weights over the same batches must
    # end in the same weights, if lit_cnn's epoch is the plain loop plus bookkeeping only.
    dm = bench.split_datamodule(small_data, batch_size=64, seed=0)
    torch.manual_seed(0)
    lit_model = get_model("ResNN")
    torch.manual_seed(0)
    plain_model = get_model("ResNN")
    start = [p.detach().clone() for p in plain_model.parameters()]

    seconds = bench.lit_epochs("ResNN", dm, CPU, 1, 0, progress_bar=False, model=lit_model)
    assert len(seconds) == 1 and seconds[0] > 0
    optimizer = plain_model.configure_optimizers()
    assert bench.plain_epoch(plain_model.train(), optimizer, bench.train_batches(dm, CPU), CPU)

    for p0, p_lit, p_plain in zip(
        start, lit_model.parameters(), plain_model.parameters(), strict=True
    ):
        assert not torch.equal(p0, p_plain)  # it did train
        assert torch.allclose(p_lit, p_plain, atol=1e-5)


def test_train_batches_match_the_datamodule_s(small_data):
    dm = bench.split_datamodule(small_data, batch_size=100, seed=3)
    mine, theirs = bench.train_batches(dm, CPU), dm.train_dataloader()
    # The plain loop's batches are the DataModule's: same images, order and loss weight, and
    # each epoch the same next permutation.
    epochs = []
    for _ in range(2):
        pairs = list(zip(mine, theirs, strict=True))
        for (x1, y1, w1), (x2, y2, w2) in pairs:
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and w1 == w2 == 1
        assert [len(y) for (_, y, _), _ in pairs] == [100] * 5 + [12]  # 512 in batches of 100
        epochs.append(torch.cat([y for (_, y, _), _ in pairs]))
    assert not torch.equal(epochs[0], epochs[1])


def _notebook_tensors(n):
    # The notebook's float tensors: images / 255 as float32 (N, 1, 32, 32).
    data = bench.load_subset("sample", n)
    return to_float(data.x_train, data.scale), data.y_train


def test_notebook_trainer_learns():
    images, labels = _notebook_tensors(512)
    data = notebook.MnistDataset(images, labels)
    assert len(data) == 512 and data[3][0].shape == (1, 32, 32)
    torch.manual_seed(0)
    trainer = notebook.Trainer(notebook.notebook_net("ShallowCNN"), "adam", 2e-3, 128, 3, 1e-4)
    loss_before, _ = trainer.evaluate(data)
    res = trainer.train(data, notebook.MnistDataset(images[:128], labels[:128]))
    assert len(res["train_loss_list"]) == len(res["val_acc_list"]) == 3
    assert res["train_loss_list"][-1] < loss_before
    assert res["seconds"] > 0
    with pytest.raises(NotImplementedError):
        notebook.Trainer(notebook.notebook_net("ResNN"), "rmsprop", 1e-3, 128, 1, 0.0)


def test_notebook_kfold_returns_mean_and_std():
    images, labels = _notebook_tensors(300)
    lines = []
    res = notebook.kfold_cross_validation(
        lambda: notebook.notebook_net("ResNN"),
        3,
        images,
        labels,
        images[:100],
        labels[:100],
        learning_rate=1e-3,
        epoch=1,
        seed=0,
        log=lines.append,
    )
    assert len(res["train_acc"]) == len(res["test_acc"]) == len(res["seconds"]) == 3
    assert 0 <= res["test_acc_mean"] <= 1 and res["test_acc_std"] >= 0
    assert lines[0] == "Fold 0:" and "Final results:" in lines
    early = notebook.kfold_cross_validation(
        lambda: notebook.notebook_net("ResNN"),
        3,
        images,
        labels,
        images[:100],
        labels[:100],
        epoch=1,
        early_break=True,
        log=lambda _: None,
    )
    assert len(early["test_acc"]) == 1


def test_notebook_command_reads_the_pickle_like_the_notebook(tiny_pkl, capsys):
    args = ["--model", "ResNN", "--data", str(tiny_pkl), "--k", "2", "--epochs", "1"]
    assert notebook.main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Fold 0:")
    assert "Final results:" in out and "Test accuracy:" in out.splitlines()[-1]
    x_train, y_train, x_test, y_test = notebook.load_notebook_pickle(tiny_pkl)
    assert x_train.shape == (600, 1, 32, 32) and x_train.dtype == torch.float32
    assert float(x_train.max()) == 1.0 and float(x_test.max()) == 1.0
    assert y_train.dtype == torch.int64 and len(y_test) == 200


def test_subset_pickle_keeps_the_first_images(tiny_pkl, tmp_path):
    out = bench.write_subset_pickle(tiny_pkl, 100, tmp_path / "first.pkl")
    with open(tiny_pkl, "rb") as f:
        (x, y), (xt, _) = pickle.load(f)
    with open(out, "rb") as f:
        (x100, y100), (xt2, _) = pickle.load(f)
    assert (x100 == x[:100]).all() and (y100 == y[:100]).all() and (xt2 == xt).all()
    with pytest.raises(ValueError, match="--n-train"):
        bench.write_subset_pickle(tiny_pkl, 601, tmp_path / "too_many.pkl")


def test_measure_command_reads_the_child_s_own_peak_memory():
    # This test process holds torch (hundreds of MB); a child that needs little must not
    # report this process's size, and one that allocates 200 MiB must report at least that.
    small = bench.measure_command([sys.executable, "-S", "-c", "pass"])
    big = bench.measure_command(
        [
            sys.executable,
            "-S",
            "-c",
            "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])",
        ]
    )
    assert small["exit"] == big["exit"] == 0 and small["seconds"] > 0
    assert small["peak_rss_mib"] < 100
    assert 200 <= big["peak_rss_mib"] < 300
    failed = bench.measure_command([sys.executable, "-S", "-c", "import sys; sys.exit(3)"])
    assert failed["exit"] == 3


@pytest.mark.slow
def test_the_notebook_baseline_never_imports_lightning(tiny_pkl):
    # The notebook imported torch, scikit-learn and matplotlib; a baseline that also paid for
    # Lightning's imports (seconds, and their teardown at exit) would flatter lit_cnn.
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import notebook; "
        f"notebook.main(['--model', 'ResNN', '--data', {str(tiny_pkl)!r}, '--k', '2', "
        "'--epochs', '1', '--device', 'cpu']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'torchmetrics', 'lit_cnn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "Final results:" in out
    loaded = out.splitlines()[-1]
    assert "lightning" not in loaded and "torchmetrics" not in loaded, loaded
    assert "'lit_cnn.models.nets'" in loaded and "'lit_cnn.data.loading'" in loaded


@pytest.mark.parametrize("name", list_models())
def test_notebook_nets_are_the_models_layers(name):
    # The baseline trains exactly lit_cnn's layers, with the same defaults.
    torch.manual_seed(0)
    model = get_model(name, channels_last=False)
    net = notebook.notebook_net(name)
    assert str(net) == str(model.net)
    assert net.load_state_dict(model.net.state_dict()) is not None  # same names and shapes
    assert nets.TRAINING_DEFAULTS[name] == {"lr": model.hparams.lr, "l2": model.hparams.l2}
    assert sorted(nets.NETS) == list_models()


@pytest.mark.slow
def test_whole_run_alternates_and_measures_both_commands(tiny_pkl, monkeypatch, capsys):
    # Stand-ins for kfold.py and the notebook CLI (each real one imports Lightning: seconds);
    # the real commands are covered by test_kfold.py and the notebook test above.
    def fake_kfold(model, data, k, epochs, batch_size, device, root):
        code = f"print('Fold 1/{k}'); print({str(root)!r})"
        return [sys.executable, "-S", "-c", code]

    def fake_notebook(model, data, k, epochs, batch_size, device):
        lines = ["Fold 0:", "Final results:", "Test acc"]
        return [sys.executable, "-S", "-c", f"print({chr(10).join(lines)!r})"]

    monkeypatch.setattr(bench, "_kfold_command", fake_kfold)
    monkeypatch.setattr(bench, "_notebook_command", fake_notebook)
    res = bench.whole_run(tiny_pkl, k=2, repeats=2, n_train=300, log=lambda _: None)
    assert [(run["which"], run["repeat"]) for run in res["runs"]] == [
        ("A", 0),
        ("B", 0),
        ("A", 1),
        ("B", 1),
    ]
    assert all(run["exit"] == 0 and run["seconds"] > 0 for run in res["runs"])
    assert res["runs"][0]["tail"][0] == "Fold 1/2"
    assert res["runs"][1]["tail"][-1] == "Test acc"
    assert len(res["ratio_a_b"]) == 2 and res["median_ratio_a_b"] > 0
    text = bench.format_whole_run(res)
    assert "A/B wall time: median" in text and "peak RSS of A" in text


def test_a_failing_whole_run_says_why(tiny_pkl, monkeypatch):
    monkeypatch.setattr(
        bench,
        "_kfold_command",
        lambda *a: [sys.executable, "-S", "-c", "import sys; print('bad data'); sys.exit(2)"],
    )
    with pytest.raises(RuntimeError, match="bad data"):
        bench.whole_run(tiny_pkl, repeats=1, log=lambda _: None)


def test_tune_malloc_is_accepted_by_glibc():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    bench.tune_malloc()  # raises if mallopt refused a value
    assert set(bench.MALLOC_ENV) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


def test_unknown_net_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'LeNet'; valid models: DeepCNN, ResNN"):
        nets.build_net("LeNet")
