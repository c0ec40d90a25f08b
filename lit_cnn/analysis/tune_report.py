"""What a study writes: tune.json, tune.md, best.yaml, history.png, importance.png, the
TensorBoard hparams rows, and the verdict on the winner against the runner-up."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from lit_cnn.analysis.stats import corrected_resampled_ttest
from lit_cnn.analysis.tune import Search, best_trials, storage_url
from lit_cnn.analysis.verdicts import ALPHA, format_p, signed
from lit_cnn.cv.files import atomic_write, write_json, write_text
from lit_cnn.cv.report import save_figure
from lit_cnn.cv.seal import CONFIG

BEST_YAML = "best.yaml"


def trial_entry(t: FrozenTrial) -> dict[str, Any]:
    """A trial as tune.json lists it."""
    seconds = t.user_attrs.get("seconds")
    entry = {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": t.params,
        "value": t.value,
        "fold_scores": t.user_attrs.get("fold_scores", []),
        "seconds": seconds,
        "run_dir": t.user_attrs.get("run_dir"),
    }
    if "diverged_fold" in t.user_attrs:
        entry["diverged_fold"] = t.user_attrs["diverged_fold"]
    if t.system_attrs.get("retry_history"):
        entry["retry_of"] = t.system_attrs["retry_history"][-1]
    if t.user_attrs.get("surplus"):
        entry["surplus"] = True  # started while the study had all its trials: never run
    return entry


def _fold_sizes(run_dir: Path) -> tuple[float, float]:
    val = [len(v) for v in json.loads((run_dir / "folds.json").read_text())["val_indices"]]
    total = sum(val)
    return float(np.mean([total - n for n in val])), float(np.mean(val))


def verdict(search: Search, ranked: Sequence[FrozenTrial]) -> dict[str, Any]:
    """The best trial against the runner-up, by the corrected resampled t-test.

    Every trial trains on the same folds, so their fold scores are paired.

    Returns:
        ``{"text", "best", "runner_up", "mean", "p", ...}``; ``text`` alone when there is no
        runner-up or too few folds.
    """
    if len(ranked) < 2:
        return {"text": "one complete trial: nothing to compare the best with"}
    best, second = ranked[0], ranked[1]
    a, b = (np.asarray(t.user_attrs.get("fold_scores", []), float) for t in (best, second))
    if len(a) < 2 or len(a) != len(b):
        return {"text": f"trial {best.number} is first; one fold per trial tells no more"}
    scale = 100.0 if search.metric == "val/acc" else 1.0  # accuracies in percentage points
    n_train, n_val = _fold_sizes(Path(best.user_attrs["run_dir"]))
    res = corrected_resampled_ttest(scale * (a - b), n_train, n_val)
    unit = " pt" if scale == 100 else ""
    head = (
        f"trial {best.number} vs runner-up trial {second.number}: {search.metric} "
        f"{signed(res.mean, 4 if scale == 1 else 2)}{unit} per fold, {format_p(res.p)} "
        "(corrected resampled t-test on the shared folds)"
    )
    if res.p < ALPHA:
        text = f"{head}: the winner is really better"
    else:
        text = f"{head}: the winner is merely first; the two are not told apart at 5%"
    return {
        "text": text,
        "best": best.number,
        "runner_up": second.number,
        "test": "corrected resampled t-test",
        "mean": res.mean,
        "p": res.p,
        "ci": [res.ci_low, res.ci_high],
        "unit": "percentage points" if scale == 100 else search.metric,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def tune_markdown(summary: Mapping[str, Any], top: int = 10) -> str:
    """tune.md: the best trials, the best params, the verdict (and the nested estimate)."""
    metric = summary["metric"]
    ranked = [t for t in summary["trials"] if t["state"] == "complete" and t["value"] is not None]
    ranked.sort(key=lambda t: t["value"] if summary["direction"] == "minimize" else -t["value"])
    names = sorted({k for t in summary["trials"] for k in t["params"]})
    lines = [
        f"# Study {summary['study']}",
        "",
        f"{summary['finished']} finished trials of {summary['n_trials']} "
        f"({summary['states'].get('pruned', 0)} pruned); objective: mean over folds of the "
        f"best epoch's {metric} ({summary['direction']}d).",
        "",
        "| rank | trial | " + " | ".join(names) + f" | {metric} | folds | seconds |",
        "| ---: | ---: | " + " | ".join("---" for _ in names) + " | ---: | ---: | ---: |",
    ]
    for i, t in enumerate(ranked[:top], 1):
        params = " | ".join(_fmt(t["params"].get(n, "")) for n in names)
        seconds = f"{t['seconds']:.0f}" if t.get("seconds") is not None else ""
        lines.append(
            f"| {i} | {t['number']} | {params} | {t['value']:.4f} | {len(t['fold_scores'])} "
            f"| {seconds} |"
        )
    best = summary.get("best")
    lines += ["", "## Best", ""]
    if best:
        lines += [f"Trial {best['number']}: {metric} {best['value']:.4f}.", ""]
        lines += [f"- `{k}`: {_fmt(v)}" for k, v in best["params"].items()]
        lines += [
            "",
            f"Reproduce: `python scripts/kfold.py --config {summary['best_yaml']} --run_name best`",
            "",
        ]
    else:
        lines += ["No complete trial yet.", ""]
    lines += ["## Verdict", "", summary["verdict"]["text"], ""]
    nested = summary.get("nested")
    if nested:
        lines += nested_markdown(nested)
    return "\n".join(lines)


def nested_markdown(nested: Mapping[str, Any]) -> list[str]:
    """tune.md's section on a nested cross-validation."""
    lines = [
        "## Nested cross-validation",
        "",
        f"{nested['k_outer']} outer folds; in each, a {nested['n_trials']}-trial search on the "
        "outer-training part alone. The best trial's fold models are scored on the validation "
        "folds that chose them (inner), on the held-out outer fold, and on the test set; "
        "accuracies are the fold models' mean, the ensemble's in parentheses.",
        "",
        f"| outer fold | best trial | params | inner {nested['metric']} | inner acc "
        "| outer acc | test acc |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for o in nested["outer"]:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in o["params"].items())
        lines.append(
            f"| {o['outer_fold']} | {o['best_trial']} | {params} | {o['inner_value']:.4f} "
            f"| {o['inner_val_acc']:.4f} | {o['outer_acc']:.4f} ({o['outer_ensemble_acc']:.4f}) "
            f"| {o['test_acc']:.4f} ({o['test_ensemble_acc']:.4f}) |"
        )
    lines += [
        "",
        f"Nested estimate (held-out outer folds): {nested['outer_acc_mean']:.4f} ± "
        f"{nested['outer_acc_std']:.4f} per fold model, "
        f"{nested['outer_ensemble_acc_mean']:.4f} for the ensembles. The inner searches' own "
        f"estimate of the same models, on the folds that chose them: "
        f"{nested['inner_val_acc_mean']:.4f} (held-out minus inner: "
        f"{nested['outer_acc_mean'] - nested['inner_val_acc_mean']:+.4f}).",
        "",
        f"Stability of the chosen configuration: {nested['stability']}.",
        "",
    ]
    return lines


def _figures(study: optuna.Study, tune_dir: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental, and warns when few trials make the
        # importances equal (the figure shows them as they are).
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="The number of trials is too small")
        ax = ovm.plot_optimization_history(study, target_name=metric)
        ax.figure.set_size_inches(8, 4.5)
        ax.figure.tight_layout()
        save_figure(ax.figure, tune_dir / "history.png")
        try:
            ax = ovm.plot_param_importances(study, target_name=metric)
            fig = ax.figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
        except (ValueError, RuntimeError) as err:  # fewer than 2 complete trials, one value
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"No importances yet: {err}", ha="center", wrap=True)
        save_figure(fig, tune_dir / "importance.png")
    plt.close("all")


def log_trial_hparams(search: Search, trial: FrozenTrial) -> None:
    """One row of TensorBoard's hparams view for a finished trial (``<tune dir>/tensorboard``)."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        return
    from lightning.pytorch.loggers import TensorBoardLogger

    params = {"model": search.models[0], **trial.params, "state": trial.state.name.lower()}
    scores = trial.user_attrs.get("fold_scores", [])
    value = trial.value if trial.value is not None else (float(np.mean(scores)) if scores else None)
    metrics = {f"tune/{search.metric}": value if value is not None else math.nan}
    logger = TensorBoardLogger(
        search.tune_dir,
        name="tensorboard",
        version=f"trial_{trial.number}",
        default_hp_metric=False,
    )
    logger.log_hyperparams(params, metrics=metrics)
    logger.finalize("success")


def report_trial(search: Search, study: optuna.Study, trial: FrozenTrial) -> None:
    """After each trial: a line on stdout and the trial's hparams row."""
    if trial.user_attrs.get("surplus"):
        return
    state = trial.state.name.lower()
    value = f", {search.metric} {trial.value:.4f}" if trial.value is not None else ""
    why = ""
    if "diverged_fold" in trial.user_attrs:
        why = f" (fold {trial.user_attrs['diverged_fold']} diverged)"
    elif trial.state == TrialState.PRUNED:
        why = f" after {len(trial.user_attrs.get('fold_scores', []))} folds"
    ranked = best_trials(study)
    best = f"; best so far: trial {ranked[0].number}" if ranked else ""
    search.log(f"trial {trial.number}: {state}{why}{value}{best}")
    log_trial_hparams(search, trial)


def write_study(
    search: Search, study: optuna.Study, nested: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Writes tune.json, tune.md, best.yaml and the figures; returns tune.json's content."""
    trials = study.get_trials(deepcopy=False)
    ranked = best_trials(study)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    summary: dict[str, Any] = {
        "study": search.study_name,
        "storage": storage_url(search),
        "metric": search.metric,
        "direction": search.direction,
        "n_trials": search.n_trials,
        "finished": states.get("complete", 0) + states.get("pruned", 0),
        "states": states,
        "models": list(search.models),
        "space": {p.name: p.spec() for p in search.space},
        "options": list(search.base_argv),
        "trials": [trial_entry(t) for t in trials],
        "best": trial_entry(ranked[0]) if ranked else None,
        "best_yaml": str(search.tune_dir / BEST_YAML),
        "verdict": verdict(search, ranked),
    }
    if search.overhead:
        summary["overhead_seconds"] = {str(k): v for k, v in search.overhead.items()}
    if nested:
        summary["nested"] = dict(nested)
    if ranked:
        src = Path(ranked[0].user_attrs["run_dir"]) / CONFIG
        atomic_write(search.tune_dir / BEST_YAML, lambda f: f.write(src.read_bytes()))
    write_json(search.tune_dir / "tune.json", summary)
    write_text(search.tune_dir / "tune.md", tune_markdown(summary))
    _figures(study, search.tune_dir, search.metric)
    return summary
