"""Paired comparisons: the command end to end on tiny data, pairing, resume, refusals, analysis
(the Bayesian verdicts, McNemar on the test set, Holm across pairs, the 5x2cv F-test)."""

import contextlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, script
from scipy import stats as st

from lit_cnn.analysis.bayes import bayesian_correlated_ttest
from lit_cnn.analysis.compare import analyse
from lit_cnn.analysis.stats import (
    TTestResult,
    corrected_resampled_ttest,
    holm,
    mcnemar_exact,
)
from lit_cnn.analysis.verdicts import format_p, verdict, write_comparison
from lit_cnn.cli.compare import compare_main, resolve_hparams

MODELS = ("ResNN", "ResNNBatch")
QUIET = ["--trainer.enable_progress_bar", "false"]


def tiny_args(root, tiny_pkl, *extra):
    return [
        "--models",
        *MODELS,
        "--data.path",
        str(tiny_pkl),
        "--data.k",
        "2",
        "--repeats",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]


def main_quietly(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = compare_main(args)
    return status, out.getvalue().strip().splitlines()


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, tiny_pkl):
    """A finished comparison: 2 models x 2-fold x 2 repetitions, 1 epoch."""
    root = tmp_path_factory.mktemp("cmp")
    status, out = main_quietly(tiny_args(root, tiny_pkl))
    assert status == 0
    cmp_dir = Path(out[-1])
    return cmp_dir, out, json.loads((cmp_dir / "comparison.json").read_text())


def records(cmp_dir, model, rep):
    results = json.loads((cmp_dir / model / f"rep_{rep}" / "results.json").read_text())
    return results["folds"]


def test_the_comparison_directory_holds_every_file(comparison):
    cmp_dir, out, comp = comparison
    assert cmp_dir.parent.name == "compare" and cmp_dir.name == "version_0"
    for name in (
        "compare.yaml",
        "comparison.json",
        "comparison.md",
        "comparison.png",
        "posterior_ResNNBatch_vs_ResNN.png",
    ):
        assert (cmp_dir / name).stat().st_size > 0, name
    for model in MODELS:
        for rep in range(2):
            run = cmp_dir / model / f"rep_{rep}"
            for name in ("results.json", "folds.json", "summary.md", "curves.png", "oof_probs.npy"):
                assert (run / name).is_file(), run / name
    assert (comp["scheme"], comp["k"], comp["repeats"], comp["seeds"]) == ("kfold", 2, 2, [0, 1])
    assert comp["models"] == list(MODELS)
    assert comp["hparams"]["ResNN"] == {"lr": 1e-3, "l2": 1e-2, "optimizer": "adam"}
    assert (comp["n_train_total"], comp["n_fold_val"], comp["n_test"]) == (600, 300, 200)


def test_verdicts_are_printed_and_written(comparison):
    cmp_dir, out, comp = comparison
    (pair,) = comp["pairs"]
    assert (pair["a"], pair["b"]) == ("ResNN", "ResNNBatch")  # A listed first
    assert pair["verdict"].startswith("ResNNBatch vs ResNN: ")
    assert "95% CI" in pair["verdict"] and "at 5%" in pair["verdict"]
    assert pair["bayes_verdict"].startswith(("ResNNBatch ", "ResNN "))
    assert pair["verdict"] in out and pair["bayes_verdict"] in out
    assert out.index(pair["bayes_verdict"]) < out.index(pair["verdict"])
    assert out[-1] == str(cmp_dir)
    md = (cmp_dir / "comparison.md").read_text()
    # The Bayesian verdicts lead, then the frequentist ones.
    assert md.index("## Bayesian verdicts") < md.index(pair["bayes_verdict"])
    assert md.index(pair["bayes_verdict"]) < md.index("## Frequentist verdicts")
    assert md.index("## Frequentist verdicts") < md.index(pair["verdict"])
    assert "(posterior_ResNNBatch_vs_ResNN.png)" in md
    assert "## McNemar" in md and "docs/comparing.md" in md
    assert md.count("\n| 0 | 0 | ") == 2 and md.count("\n| 1 | 1 | ") == 2  # 2 folds a rep


def test_every_model_of_a_repetition_has_the_same_folds(comparison):
    cmp_dir, _, _ = comparison
    folds = {
        (m, r): json.loads((cmp_dir / m / f"rep_{r}" / "folds.json").read_text())["val_indices"]
        for m in MODELS
        for r in range(2)
    }
    for r in range(2):
        assert folds["ResNN", r] == folds["ResNNBatch", r]
        assert sorted(i for v in folds["ResNN", r] for i in v) == list(range(600))
    assert folds["ResNN", 0] != folds["ResNN", 1]  # a new split seed per repetition
    for m in MODELS:
        runs = [json.loads((cmp_dir / m / f"rep_{r}" / "results.json").read_text()) for r in (0, 1)]
        seeds = [run["seed"] for run in runs]
        assert seeds == [0, 1]


def test_the_tests_use_the_runs_scores(comparison):
    cmp_dir, _, comp = comparison
    val = {m: [r["val_acc"] for rep in range(2) for r in records(cmp_dir, m, rep)] for m in MODELS}
    test = {
        m: [r["test_acc"] for rep in range(2) for r in records(cmp_dir, m, rep)] for m in MODELS
    }
    for m in MODELS:
        assert np.ravel(comp["per_model"][m]["val_acc"]).tolist() == val[m]
        assert comp["per_model"][m]["test_acc_mean"] == pytest.approx(np.mean(test[m]))
    (pair,) = comp["pairs"]
    diffs = 100 * (np.array(val["ResNNBatch"]) - np.array(val["ResNN"]))
    expected = corrected_resampled_ttest(diffs, n_train=300, n_val=300)
    # One pair: Holm's adjustment leaves each p-value as it is.
    assert pair["corrected"] == pytest.approx({**expected.as_dict(), "p_holm": expected.p})
    ref = st.ttest_rel(100 * np.array(test["ResNNBatch"]), 100 * np.array(test["ResNN"]))
    assert pair["paired_test"]["t"] == pytest.approx(ref.statistic)
    assert pair["paired_test"]["p"] == pytest.approx(ref.pvalue)
    assert pair["dietterich"] is None and pair["f_test"] is None
    bayes = bayesian_correlated_ttest(diffs, n_train=300, n_val=300, rope=1.0)
    assert pair["bayes"] == pytest.approx(bayes.as_dict())
    assert set(pair["bayes"]) == {
        "rope",
        "p_b_better",
        "p_equivalent",
        "p_a_better",
        "mean",
        "scale",
        "df",
        "n",
    }


def test_mcnemar_counts_the_fold_ensembles_discordant_test_images(comparison, tiny_pkl):
    import lit_cnn

    cmp_dir, _, comp = comparison
    y_test = lit_cnn.load_dataset(tiny_pkl)[3].numpy()
    (pair,) = comp["pairs"]
    assert [row["repetition"] for row in pair["mcnemar"]] == [0, 1]
    for row in pair["mcnemar"]:
        right = {}
        for m in MODELS:
            run = cmp_dir / m / f"rep_{row['repetition']}"
            probs = [np.load(run / f"fold_{f}" / "test_probs.npy") for f in range(2)]
            right[m] = np.mean(probs, axis=0).argmax(1) == y_test
        assert row["n01"] == int((~right["ResNN"] & right["ResNNBatch"]).sum())
        assert row["n10"] == int((right["ResNN"] & ~right["ResNNBatch"]).sum())
        assert row["p"] == pytest.approx(mcnemar_exact(row["n01"], row["n10"]))
        assert row["p_holm"] == row["p"]
        ensemble = comp["per_model"]["ResNN"]["ensemble_test_acc"][row["repetition"]]
        assert right["ResNN"].mean() == pytest.approx(ensemble)


def test_oof_accuracy_is_reported_per_repetition(comparison):
    cmp_dir, _, comp = comparison
    for m in MODELS:
        runs = [json.loads((cmp_dir / m / f"rep_{r}" / "results.json").read_text()) for r in (0, 1)]
        assert comp["per_model"][m]["oof_acc"] == [run["oof_acc"] for run in runs]
        assert all(run["oof_scored"] == 600 for run in runs)


def test_a_new_rope_reanalyses_without_training(comparison, tmp_path):
    import shutil

    cmp_dir, _, comp = comparison
    copy = Path(shutil.copytree(cmp_dir, tmp_path / "rope"))
    recs = sorted(copy.glob("*/rep_*/fold_*/record.json"))
    before = {p: p.stat().st_mtime_ns for p in recs}
    status, out = main_quietly(["--resume", str(copy), "--rope", "50", *QUIET])
    assert status == 0
    assert {p: p.stat().st_mtime_ns for p in recs} == before
    (pair,) = json.loads((copy / "comparison.json").read_text())["pairs"]
    assert pair["bayes"]["rope"] == 50
    d = np.ravel(pair["val_diff"])
    assert pair["bayes"] == pytest.approx(bayesian_correlated_ttest(d, 300, 300, 50).as_dict())
    assert pair["corrected"] == comp["pairs"][0]["corrected"]  # the p-values stay


def test_resume_retrains_nothing(comparison):
    cmp_dir, _, comp = comparison
    recs = sorted(cmp_dir.glob("*/rep_*/fold_*/record.json"))
    assert len(recs) == 8
    before = {p: p.stat().st_mtime_ns for p in recs}
    status, out = main_quietly(["--resume", str(cmp_dir), "--trainer.enable_progress_bar", "false"])
    assert status == 0
    assert out[-1] == str(cmp_dir)
    assert sum("recorded earlier, not redone" in line for line in out) == 4
    assert {p: p.stat().st_mtime_ns for p in recs} == before
    again = json.loads((cmp_dir / "comparison.json").read_text())

    def untimed(c):
        c = json.loads(json.dumps(c))
        for s in c["per_model"].values():
            s.pop("fit_seconds")
        return c

    assert untimed(again) == untimed(comp)


def test_resume_trains_only_what_is_missing(comparison, tmp_path):
    import shutil

    cmp_dir, _, comp = comparison
    copy = Path(shutil.copytree(cmp_dir, tmp_path / "copy"))
    # As if killed before ResNNBatch's second repetition trained its second fold.
    shutil.rmtree(copy / "ResNNBatch" / "rep_1" / "fold_1")
    for name in ("results.json", "curves.png"):
        (copy / "ResNNBatch" / "rep_1" / name).unlink()
    kept = sorted(copy.glob("*/rep_*/fold_*/record.json"))
    before = {p: p.stat().st_mtime_ns for p in kept}
    status, out = main_quietly(["--resume", str(copy), "--trainer.enable_progress_bar", "false"])
    assert status == 0
    assert sum("recorded earlier, not redone" in line for line in out) == 3
    assert sum("Fold 2/2: test acc" in line for line in out) == 1
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    again = json.loads((copy / "comparison.json").read_text())
    # The same seeds give the same fold on the CPU, so the same tests.
    assert again["pairs"] == comp["pairs"]


def test_resume_refuses_options_that_change_the_results(comparison, capsys):
    cmp_dir, _, _ = comparison
    assert compare_main(["--resume", str(cmp_dir), "--data.k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data.k" in err
    assert compare_main(["--resume", str(cmp_dir.parent)]) == 2
    assert "not a comparison directory" in capsys.readouterr().err


def test_a_name_is_never_reused(comparison, tiny_pkl, capsys):
    cmp_dir, _, _ = comparison
    root = cmp_dir.parents[2]
    assert compare_main(tiny_args(root, tiny_pkl, "--name", "version_0")) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_early_break_is_refused_by_the_script(tmp_path, tiny_pkl):
    proc = subprocess.run(
        [*script("compare.py"), *tiny_args(tmp_path, tiny_pkl, "--early_break", "true")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compare.py: error: --early_break")
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "ResNN", "NoSuchNet"], "unknown model 'NoSuchNet'; valid models: DeepCNN"),
        (["--models", "ResNN"], "at least 2 models"),
        (["--models", "ResNN", "ResNN"], "given twice"),
        (["--scheme", "5x2cv"], "--scheme 5x2cv is 5 repetitions"),
        (["--scheme", "5x2cv", "--repeats", "5", "--data.k", "3"], "--scheme 5x2cv is 2-fold"),
        (["--scheme", "bogus"], "--scheme"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--rope", "-1"], "--rope: invalid value -1.0; expected a finite number >= 0"),
        (["--rope", "nan"], "--rope: invalid value"),
        (["--model.lr", "-1"], "--model.lr: invalid value -1.0; expected a finite number > 0"),
        (["--hparams", "{ResNN: {lr: 0}}"], "--hparams.ResNN.lr must be"),
        (["--hparams", "{ResNN: {lrate: 1}}"], "--hparams.ResNN: unknown key 'lrate'"),
        (["--hparams", "{Foo: {lr: 1}}"], "--hparams: unknown model 'Foo'"),
        (
            ["--trainer.max_epochs", "0"],
            "--trainer.max_epochs: invalid value 0; expected an integer",
        ),
        (["--data.path", "/no/such.pkl"], "/no/such.pkl"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, tiny_pkl, capsys, extra, message):
    assert compare_main(tiny_args(tmp_path, tiny_pkl, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("compare.py: error: ") and message in err, err
    assert not (tmp_path / "lightning_logs").exists()


def test_print_config_round_trips(tmp_path, tiny_pkl, capsys):
    import yaml

    with pytest.raises(SystemExit) as exc:
        compare_main(
            tiny_args(tmp_path, tiny_pkl, "--hparams", "{ResNN: {lr: 0.002}}", "--print_config")
        )
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["models"] == list(MODELS) and cfg["repeats"] == 2
    assert cfg["hparams"] == {"ResNN": {"lr": 0.002}}


def test_hparams_precedence():
    hp = resolve_hparams(
        ["ShallowCNN", "ResNN", "DeepCNN"],
        {"l2": 0.0, "lr": None},
        {"ResNN": {"lr": 0.5, "optimizer": "sgdm"}},
    )
    # The notebook's defaults per architecture, then --model.* for all, then per model.
    assert hp["ShallowCNN"] == {"lr": 2e-3, "l2": 0.0, "optimizer": "adam"}
    assert hp["DeepCNN"] == {"lr": 1e-3, "l2": 0.0, "optimizer": "adam"}
    assert hp["ResNN"] == {"lr": 0.5, "l2": 0.0, "optimizer": "sgdm"}


def test_verdict_reads_like_the_issue():
    res = TTestResult("corrected resampled t-test", 0.31, -0.12, 0.74, 0.2, 1.55, 5, 0.14, 6)
    assert verdict("ResNNBatch_Skip", "ResNNBatch_NoSkip", res) == (
        "ResNNBatch_Skip vs ResNNBatch_NoSkip: +0.31 pt (95% CI \u22120.12 to +0.74), "
        "p = 0.14: no significant difference at 5%"
    )
    worse = TTestResult("corrected resampled t-test", -2.0, -3.0, -1.0, 0.4, -5, 5, 0.004, 6)
    assert verdict("B", "A", worse).endswith("p = 0.004: significant at 5%, A is better")
    # 5x2cv: the estimate is one fold's difference, and the line says so.
    one = TTestResult("5x2cv paired t-test", 1.5, -0.5, 3.5, 0.8, 1.9, 5, 0.12, 10)
    assert verdict("B", "A", one, overall_mean=0.25) == (
        "B vs A: +1.50 pt in the first fold (95% CI \u22120.50 to +3.50), p = 0.12: "
        "no significant difference at 5% (mean of all 10 folds +0.25 pt)"
    )
    # Several pairs: the verdict rests on the Holm-adjusted p-value, both are shown.
    adjusted = {**res.as_dict(), "p": 0.03, "p_holm": 0.09}
    assert verdict("B", "A", adjusted, family=3) == (
        "B vs A: +0.31 pt (95% CI \u22120.12 to +0.74), p = 0.03, Holm-adjusted over 3 pairs "
        "p = 0.09: no significant difference at 5%"
    )
    assert format_p(0.0496) == "p = 0.0496"  # not "0.05" for a p below 5%
    assert format_p(0.0004) == "p < 0.001"


def fake_collected(val, test, k, repeats, n_train_total=1000):
    """What collect() reads from run directories, made up from (R, K) score arrays."""
    runs = {
        m: [
            {
                "k": k,
                "seed": r,
                "data": "made up",
                "folds": [
                    {
                        "val_acc": None if np.isnan(val[m][r][f]) else val[m][r][f],
                        "test_acc": None if np.isnan(test[m][r][f]) else test[m][r][f],
                        "fit_seconds": 1.0,
                        "test_samples": 500,
                    }
                    for f in range(k)
                ],
                "ensemble_test_acc": 0.9,
                "diverged_folds": [f for f in range(k) if np.isnan(val[m][r][f])],
            }
            for r in range(repeats)
        ]
        for m in val
    }
    return {
        "models": list(val),
        "k": k,
        "seeds": list(range(repeats)),
        "data": "made up",
        "fold_sizes": [n_train_total // k] * k,
        "n_test": 500,
        "runs": runs,
    }


def test_5x2cv_uses_dietterichs_test(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(0.90, 0.92, size=(5, 2))
    b = a - 0.01 + rng.normal(0, 0.002, size=(5, 2))
    comp = analyse(fake_collected({"A": a, "B": b}, {"A": a, "B": b}, 2, 5), "5x2cv")
    (pair,) = comp["pairs"]
    assert (pair["a"], pair["b"]) == ("A", "B")
    d = 100 * (b - a)
    s2 = ((d - d.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    t = d[0, 0] / np.sqrt(s2.mean())
    assert pair["dietterich"]["t"] == pytest.approx(t)
    assert pair["dietterich"]["p"] == pytest.approx(2 * st.t.sf(abs(t), 5))
    # The verdict rests on the combined F-test: F = sum d^2 / (2 sum s_i^2), df 10 and 5.
    f = (d**2).sum() / (2 * s2.sum())
    assert pair["f_test"]["F"] == pytest.approx(f)
    assert pair["f_test"]["p"] == pytest.approx(st.f.sf(f, 10, 5))
    assert pair["f_test"]["p_holm"] == pair["f_test"]["p"]
    assert comp["verdict_test"] == "combined 5x2cv F-test"
    assert pair["verdict"].startswith("B vs A: mean ")
    assert f"F = {f:.2f} (10 and 5 df), {format_p(pair['f_test']['p'])}" in pair["verdict"]
    # 5x2cv's corrected test: n_val/n_train = 1.
    corrected = corrected_resampled_ttest(d, 500, 500)
    assert pair["corrected"]["se"] == pytest.approx(corrected.se)
    comp.update(name="made-up", hparams={}, config={})
    write_comparison(tmp_path, comp)
    md = (tmp_path / "comparison.md").read_text()
    assert "5x2cv paired t-test" in md and "combined 5×2cv F-test" in md and "Alpaydın" in md
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert (tmp_path / "posterior_B_vs_A.png").stat().st_size > 0


def test_holm_adjusts_every_family_across_pairs_and_the_verdicts_use_it():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.90, 0.92, size=(2, 5))
    val = {
        "A": base,
        "B": base + 0.004 + rng.normal(0, 0.004, size=(2, 5)),
        "C": base + 0.03 + rng.normal(0, 0.004, size=(2, 5)),
    }
    collected = fake_collected(val, val, 5, 2)
    right = {m: [rng.random(50) < acc for acc in (0.7, 0.8)] for m in val}
    collected["test_correct"] = right
    comp = analyse(collected, rope=0.5)
    assert [(p["a"], p["b"]) for p in comp["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert comp["holm_family"] == 3 and comp["rope"] == 0.5
    for key in ("corrected", "paired_test"):
        raw = [p[key]["p"] for p in comp["pairs"]]
        assert [p[key]["p_holm"] for p in comp["pairs"]] == pytest.approx(list(holm(raw)))
    for r in range(2):
        rows = [p["mcnemar"][r] for p in comp["pairs"]]
        assert [row["p_holm"] for row in rows] == pytest.approx(list(holm([x["p"] for x in rows])))
    ab = comp["pairs"][0]
    assert ab["mcnemar"][1]["n01"] == int((~right["A"][1] & right["B"][1]).sum())
    for p in comp["pairs"]:
        c = p["corrected"]
        assert f"Holm-adjusted over 3 pairs {format_p(c['p_holm'])}" in p["verdict"]
        assert ("significant at 5%," in p["verdict"]) == (c["p_holm"] < 0.05)
        assert p["bayes"]["rope"] == 0.5


def test_a_diverged_fold_drops_its_pairs():
    val = {"A": np.full((2, 3), 0.9), "B": np.array([[0.91, np.nan, 0.92], [0.93, 0.9, 0.91]])}
    comp = analyse(fake_collected(val, val, 3, 2))
    (pair,) = comp["pairs"]
    assert pair["n_pairs"] == 5 and pair["corrected"]["n"] == 5
    assert comp["per_model"]["B"]["diverged"] == [[0, 1]]
    assert pair["val_diff"][0][1] is None
