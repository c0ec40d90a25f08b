"""The README's results table is what the current code gives: its headline run again."""

import json
import re
import subprocess

import pytest
from conftest import ROOT, script


def readme_table() -> dict:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (\d) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    mean = re.search(
        r"^\| mean ± std \| \| ([\d.]+) ± ([\d.]+) \| \| ([\d.]+) ± ([\d.]+) \|$", text, re.M
    )
    ensemble = re.search(r"Fold ensemble: ([\d.]+) test accuracy", text)
    assert rows and mean and ensemble, "README: the results table is missing or malformed"
    return {"rows": rows, "mean": [float(v) for v in mean.groups()], "ensemble": float(ensemble[1])}


@pytest.mark.slow
def test_the_readme_table_matches_a_fresh_default_run(tmp_path):
    table = readme_table()
    proc = subprocess.run(
        [*script("kfold.py"), "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(
        (tmp_path / proc.stdout.strip().splitlines()[-1] / "results.json").read_text()
    )
    assert results["data"] == "sample" and results["model"] == "DeepCNN"
    assert len(table["rows"]) == len(results["folds"]) == 3
    for row, fold in zip(table["rows"], results["folds"], strict=True):
        assert int(row[0]) == fold["fold"]
        for value, key in zip(row[2:], ("train_acc", "val_acc", "test_acc"), strict=True):
            assert float(value) == pytest.approx(fold[key], abs=0.005), (fold["fold"], key)
    want = [
        results[k] for k in ("train_acc_mean", "train_acc_std", "test_acc_mean", "test_acc_std")
    ]
    assert table["mean"] == pytest.approx(want, abs=0.005)
    assert table["ensemble"] == pytest.approx(results["ensemble_test_acc"], abs=0.005)
