"""Nested cross-validation of a search: the estimate of "this architecture, tuned this way".

The training set is split into K_OUTER outer folds. For each, a whole search runs on the
outer-training part alone (its data written as ``outer_<o>/data.pkl``, so every inner trial
is an ordinary K-fold run that kfold.py can repeat), and the best trial's fold ensemble is
scored on the held-out outer fold (that data file's test set) and on the real test set. The
held-out images took part in no choice: neither the trial's nor the epoch's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_cnn.analysis.tune import Search, best_trials, storage_url, work
from lit_cnn.analysis.tune_report import nested_markdown, report_trial, write_study
from lit_cnn.cv.datamodule import KFoldDataModule
from lit_cnn.cv.files import write_json, write_text
from lit_cnn.data.idx import write_notebook_pickle
from lit_cnn.data.loading import ImageData, to_float


def outer_splits(y: np.ndarray, k_outer: int, seed: int, stratified: bool) -> list[np.ndarray]:
    """The held-out indices of each outer fold (the split of the inner folds' kind)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (StratifiedKFold if stratified else KFold)(k_outer, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(y)), y)]


def write_outer_data(data: ImageData, held: np.ndarray, path: Path) -> None:
    """``path``: the notebook's format with the outer-training part as the training set and
    the held-out outer fold as the test set."""
    if path.is_file():  # written by an earlier or another worker: the same images
        return
    keep = np.setdiff1d(np.arange(len(data.y_train)), held)
    x, y = data.x_train.numpy()[:, 0], data.y_train.numpy()
    write_notebook_pickle(((x[keep], y[keep]), (x[held], y[held])), path)


@torch.inference_mode()
def accuracies(
    run_dir: Path, images: torch.Tensor, labels: torch.Tensor, scale: float
) -> tuple[float, float]:
    """The mean accuracy of a finished run's fold models, and their ensemble's, on ``images``.

    Args:
        run_dir: A K-fold run directory with results.json.
        images: Stored images (N, 1, S, S), as :class:`ImageData` holds them.
        labels: (N,) labels.
        scale: The scaling constant the run trained with.
    """
    from lit_cnn.predict.ensemble import ensemble_of, open_run

    def accuracy(model: torch.nn.Module) -> float:
        return float((model(x).argmax(dim=1) == labels).float().mean())

    x, run = to_float(images, scale), open_run(run_dir)
    members = [accuracy(ensemble_of(run, fold)) for fold in run.folds]
    return float(np.mean(members)), accuracy(ensemble_of(run))


def stability(chosen: list[Mapping[str, Any]]) -> str:
    """How alike the outer folds' best configurations are, in one line."""
    parts = []
    for key in sorted({k for c in chosen for k in c}):
        values = [c.get(key) for c in chosen]
        if all(isinstance(v, float) for v in values):
            lo, hi = min(values), max(values)
            parts.append(f"{key} {lo:.3g} to {hi:.3g} (x{hi / lo:.2g})" if lo > 0 else
                         f"{key} {lo:.3g} to {hi:.3g}")  # fmt: skip
        else:
            top = max(set(map(repr, values)), key=[repr(v) for v in values].count)
            n = [repr(v) for v in values].count(top)
            parts.append(f"{key} {top} in {n} of {len(values)}")
    return "; ".join(parts) if parts else "nothing searched"


def run_nested(search: Search, k_outer: int, data: Mapping[str, Any]) -> dict[str, Any]:
    """Runs (or continues) every outer fold's search; writes the nested tune.json and tune.md.

    Args:
        search: The search as the command gave it; each outer fold searches its own study,
            ``<name>/outer_<o>``, in the same storage.
        k_outer: Number of outer folds.
        data: ``path``, ``seed`` and ``stratified`` of the data the command was given.

    Returns:
        The nested tune.json's content.
    """
    dm = KFoldDataModule(path=data["path"])
    full = dm.data
    outer = []
    for o, held in enumerate(
        outer_splits(full.y_train.numpy(), k_outer, data["seed"], data["stratified"])
    ):
        odir = search.tune_dir / f"outer_{o}"
        path = odir / "data.pkl"
        write_outer_data(full, held, path)
        sub = dataclasses.replace(
            search,
            tune_dir=odir,
            study_name=f"{search.study_name}/outer_{o}",
            storage=storage_url(search),
            base_argv=[*search.base_argv, "--data.path", str(path)],
            overhead={},
            # Each outer search draws its own trials (the same seed would repeat them).
            sampler_seed=None if search.sampler_seed is None else search.sampler_seed + o,
        )
        search.log(f"outer fold {o + 1}/{k_outer}: a search on {len(full.y_train) - len(held)} "
                   f"images, {len(held)} held out")  # fmt: skip
        study = work(sub, [lambda st, t, sub=sub: report_trial(sub, st, t)])
        write_study(sub, study)
        ranked = best_trials(study)
        if not ranked:
            raise RuntimeError(f"outer fold {o}: no trial completed")
        best = ranked[0]
        run_dir = Path(best.user_attrs["run_dir"])
        results = json.loads((run_dir / "results.json").read_text())
        scale = KFoldDataModule(path=str(path)).data.scale
        test_acc, test_ensemble_acc = accuracies(run_dir, full.x_test, full.y_test, scale)
        val = [r["val_acc"] for r in results["folds"] if not r["diverged"]]
        outer.append(
            {
                "outer_fold": o,
                "study": sub.study_name,
                "best_trial": best.number,
                "run_dir": str(run_dir),
                "params": best.params,
                "inner_value": best.value,
                # The same fold models: on their validation folds (which chose them), on the
                # held-out outer fold (that run's test set), on the real test set.
                "inner_val_acc": float(np.mean(val)),
                "outer_acc": results["test_acc_mean"],
                "outer_ensemble_acc": results["ensemble_test_acc"],
                "test_acc": test_acc,
                "test_ensemble_acc": test_ensemble_acc,
                "held_out": len(held),
            }
        )
    accs = np.array([o["outer_acc"] for o in outer])
    nested = {
        "k_outer": k_outer,
        "n_trials": search.n_trials,
        "metric": search.metric,
        "outer": outer,
        "outer_acc_mean": float(accs.mean()),
        "outer_acc_std": float(accs.std(ddof=1)),
        "outer_ensemble_acc_mean": float(np.mean([o["outer_ensemble_acc"] for o in outer])),
        "test_acc_mean": float(np.mean([o["test_acc"] for o in outer])),
        "test_ensemble_acc_mean": float(np.mean([o["test_ensemble_acc"] for o in outer])),
        "inner_val_acc_mean": float(np.mean([o["inner_val_acc"] for o in outer])),
        "stability": stability([o["params"] for o in outer]),
    }
    summary = {
        "study": search.study_name,
        "storage": storage_url(search),
        "metric": search.metric,
        "direction": search.direction,
        "n_trials": search.n_trials,
        "finished": sum(1 for _ in outer),
        "states": {},
        "trials": [],
        "best": None,
        "best_yaml": None,
        "verdict": {
            "text": f"nested estimate {nested['outer_acc_mean']:.4f} +/- "
            f"{nested['outer_acc_std']:.4f} over {k_outer} outer folds; the inner searches' "
            f"own estimate of the same models: {nested['inner_val_acc_mean']:.4f}"
        },
        "nested": nested,
    }
    write_json(search.tune_dir / "tune.json", summary)
    head = [
        f"# Nested study {search.study_name}",
        "",
        "Each outer fold's own study: "
        + ", ".join(f"[{o['study']}](outer_{o['outer_fold']}/tune.md)" for o in outer),
        "",
    ]
    write_text(search.tune_dir / "tune.md", "\n".join([*head, *nested_markdown(nested)]))
    return summary
