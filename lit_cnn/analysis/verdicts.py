"""What a comparison writes and prints: the verdicts in words, comparison.md, comparison.png,
comparison.json and the closing summary lines."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lit_cnn.analysis.stats import TTestResult
from lit_cnn.cv.report import save_figure, write_json, write_text

ALPHA = 0.05  # significance level of the verdicts; the intervals are 1 - ALPHA = 95%
MINUS = "\u2212"


def signed(x: float, digits: int = 2) -> str:
    """``+0.31`` or ``−0.12`` (a true minus sign).

    Args:
        x: The number.
        digits: Decimals shown.
    """
    text = f"{x:+.{digits}f}"
    return text.replace("-", MINUS)


def format_p(p: float) -> str:
    """``p = 0.14``, ``p = 0.0012`` or ``p < 0.001``; never rounded across 0.05.

    Args:
        p: The p-value.
    """
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    if (float(text) < ALPHA) != (p < ALPHA):  # e.g. 0.0496 would print as 0.05
        text = f"{p:.4f}"
    return f"p = {text}"


def verdict(a: str, b: str, res: TTestResult, overall_mean: float | None = None) -> str:
    """One line in plain words, e.g. ``B vs A: +0.31 pt (95% CI −0.12 to +0.74), p = 0.14:
    no significant difference at 5%``.

    Args:
        a: The later model; the difference is ``a - b``.
        b: The earlier model.
        res: The test the verdict rests on.
        overall_mean: For the 5x2cv test, whose estimate is one fold's difference: the mean
            of all ten differences, added at the end so that the single fold is not taken
            for the average.
    """
    level = f"{round(100 * res.confidence)}%"
    where = " in the first fold" if overall_mean is not None else ""
    head = (
        f"{a} vs {b}: {signed(res.mean)} pt{where} ({level} CI {signed(res.ci_low)} to "
        f"{signed(res.ci_high)}), {format_p(res.p)}"
    )
    pct = f"{round(100 * ALPHA)}%"
    if not res.significant(ALPHA):
        line = f"{head}: no significant difference at {pct}"
    else:
        line = f"{head}: significant at {pct}, {a if res.mean > 0 else b} is better"
    if overall_mean is not None:
        line += f" (mean of all {res.n} folds {signed(overall_mean)} pt)"
    return line


# ----------------------------------------------------------------------------- files

TRUST = (
    "Which test to trust: {which} The {j} validation-fold differences come from models "
    "trained on overlapping resamples of the same {n} images (two folds of one repetition "
    "share {shared} of their training images; repetitions reuse all of them), so they are "
    "positively correlated and the plain variance of their mean, s²/J, is too small. "
    "Nadeau and Bengio (2003) inflate it to (1/J + n_val/n_train)·s², here "
    "(1/{j} + {nv:.0f}/{nt:.0f})·s². The plain paired t-test on the test-set scores treats "
    "the {j} fold models as independent although they were trained on overlapping data and "
    "are all scored on the same {ntest} test images; like any uncorrected test on resampled "
    "scores it rejects a true null hypothesis far more often than 5% (Dietterich, 1998), so "
    "it is shown for reference only."
)
TRUST_KFOLD = "the corrected resampled t-test, on which the verdicts rest."
TRUST_5X2 = (
    "Dietterich's 5×2cv paired t-test, on which the verdicts rest, or the corrected "
    "resampled t-test beside it; not the plain paired t-test. Dietterich's test is built for "
    "this design (t with 5 degrees of freedom) and keeps its 5% level, but its estimate is the "
    "first fold's difference alone, so it has less power; the corrected test uses all ten "
    "differences as an estimate."
)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _test_row(label: str, scores: str, res: Mapping[str, Any] | None) -> str:
    if res is None:
        return f"| {label} | {scores} | too few pairs | | | | | |"
    return (
        f"| {label} | {scores} | {res['test']} | {signed(res['mean'])} | "
        f"{signed(res['ci_low'])} to {signed(res['ci_high'])} | {signed(res['t'])} | {res['df']} "
        f"| {format_p(res['p']).removeprefix('p = ').removeprefix('p ')} |"
    )


def comparison_markdown(comp: Mapping[str, Any]) -> str:
    """The comparison as Markdown: verdicts, per-model table, per-pair tests, fold runs.

    Args:
        comp: The contents of comparison.json.
    """
    models, k, repeats = comp["models"], comp["k"], comp["repeats"]
    design_text = (
        "5×2cv (5 repetitions of 2-fold)"
        if comp["scheme"] == "5x2cv"
        else f"{k}-fold × {repeats} repetition{'s' if repeats > 1 else ''}"
    )
    seeds = ", ".join(str(s) for s in comp["seeds"])
    lines = [
        f"# Comparison {comp.get('name', '')}: {', '.join(models)}",
        "",
        f"{design_text}, split seeds {seeds}; every model trained on the same folds. Data: "
        f"{comp['data']} ({comp['n_train_total']} training images; each fold trains on "
        f"{comp['n_fold_train']:.0f} and validates on {comp['n_fold_val']:.0f}; "
        f"{comp['n_test']} test images).",
        "",
        f"## Verdicts ({comp['verdict_test']} on the validation-fold accuracies, 95% CI, "
        "differences in percentage points)",
        "",
        *[f"- {p['verdict']}" for p in comp["pairs"]],
        "",
        "## Models",
        "",
        "| model | lr | L2 | optimizer | validation acc % (mean ± std) | test acc % "
        "(mean ± std) | ensemble test acc % per repetition | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models:
        s, hp = comp["per_model"][m], comp.get("hparams", {}).get(m, {})
        val = f"{_pct(s['val_acc_mean'])} ± {_pct(s['val_acc_std'])}"
        test = f"{_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])}"
        ens = ", ".join(_pct(e) for e in s["ensemble_test_acc"])
        lines.append(
            f"| {m} | {hp.get('lr', '')} | {hp.get('l2', '')} | {hp.get('optimizer', '')} | "
            f"{val} | {test} | {ens} | {s['fit_seconds']:.0f} |"
        )
    lines += [
        "",
        "Mean ± population standard deviation over all "
        f"{k * repeats} fold runs. The validation accuracy is each fold's at its best epoch "
        "(lowest validation loss); the test accuracy is that epoch's model on the whole test "
        "set; the ensemble averages the softmax of a repetition's fold models.",
        "",
        "## Pairs",
        "",
        "| pair (difference) | scores | test | estimate (pt) | 95% CI (pt) | t | df | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in comp["pairs"]:
        label = f"{p['a']} − {p['b']}"
        n = p["n_pairs"]
        lines.append(_test_row(label, f"validation folds ({n} paired)", p["corrected"]))
        lines.append(_test_row("", f"test set ({n} paired fold models)", p["paired_test"]))
        if comp["scheme"] == "5x2cv":
            # Its estimate is the first fold's difference, not a mean.
            lines.append(_test_row("", "validation folds (5×2; first fold)", p["dietterich"]))
    j = k * repeats
    trust = TRUST.format(
        which=TRUST_5X2 if comp["scheme"] == "5x2cv" else TRUST_KFOLD,
        j=j,
        n=comp["n_train_total"],
        shared="none" if k == 2 else f"{k - 2}/{k - 1}",
        nv=comp["n_fold_val"],
        nt=comp["n_fold_train"],
        ntest=comp["n_test"],
    )
    lines += ["", trust, "", "## Fold runs (accuracy %)", ""]
    header = "| repetition | seed | fold | " + " | ".join(f"{m} val | {m} test" for m in models)
    lines += [header + " |", "|" + " --- |" * (3 + 2 * len(models))]
    for r in range(repeats):
        for f in range(k):
            cells = []
            for m in models:
                s = comp["per_model"][m]
                cells += [_pct(s["val_acc"][r][f]), _pct(s["test_acc"][r][f])]
            lines.append(f"| {r} | {comp['seeds'][r]} | {f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "References: Nadeau and Bengio (2003), Inference for the generalization error, "
        "Machine Learning 52; Dietterich (1998), Approximate statistical tests for comparing "
        "supervised classification learning algorithms, Neural Computation 10; Bouckaert and "
        "Frank (2004), Evaluating the replicability of significance tests for comparing "
        "learning algorithms, PAKDD.",
        "",
    ]
    return "\n".join(lines)


def comparison_figure(comp: Mapping[str, Any]):  # -> matplotlib Figure
    """Two panels, validation-fold and test accuracy per model: a point per fold run, the
    same fold run joined across models, a bar at each model's mean.

    Args:
        comp: The contents of comparison.json.
    """
    from matplotlib.figure import Figure

    models, k, repeats = comp["models"], comp["k"], comp["repeats"]
    fig = Figure(figsize=(max(6.0, 2.2 * len(models) + 2), 4.5))
    axes = fig.subplots(1, 2, sharey=False)
    x = np.arange(len(models))
    colors = [f"C{r % 10}" for r in range(repeats)]
    for ax, key, title in zip(
        axes,
        ("val_acc", "test_acc"),
        ("Validation fold (the corrected t-test's scores)", "Test set"),
        strict=True,
    ):
        for r in range(repeats):
            for f in range(k):
                ys = [comp["per_model"][m][key][r][f] for m in models]
                ys = [np.nan if y is None else 100 * y for y in ys]
                ax.plot(
                    x,
                    ys,
                    marker="o",
                    color=colors[r],
                    alpha=0.6,
                    linewidth=1,
                    label=f"repetition {r} (seed {comp['seeds'][r]})" if f == 0 else None,
                )
        means = [comp["per_model"][m][f"{key}_mean"] for m in models]
        ax.scatter(
            x,
            [np.nan if v is None else 100 * v for v in means],
            marker="_",
            s=900,
            color="black",
            zorder=3,
            label="mean",
        )
        ax.set_xticks(x, models, rotation=15)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize="small")
    fig.suptitle("Paired fold runs: each line is one fold of one repetition", fontsize="medium")
    # Room at the bottom for the shared legend.
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def write_comparison(cmp_dir: Path, comp: Mapping[str, Any]) -> None:
    """Writes comparison.json, comparison.md and comparison.png into ``cmp_dir``, atomically.

    Args:
        cmp_dir: The comparison directory.
        comp: The comparison (see :func:`analyse`).
    """
    write_json(cmp_dir / "comparison.json", comp)
    write_text(cmp_dir / "comparison.md", comparison_markdown(comp))
    save_figure(comparison_figure(comp), cmp_dir / "comparison.png")


def summary_lines(comp: Mapping[str, Any]) -> list[str]:
    """What the command prints at the end: a line per model, then the verdicts.

    Args:
        comp: The contents of comparison.json.
    """
    lines = []
    for m in comp["models"]:
        s = comp["per_model"][m]
        ens = ", ".join(_pct(e) for e in s["ensemble_test_acc"])
        lines.append(
            f"{m}: validation {_pct(s['val_acc_mean'])} ± {_pct(s['val_acc_std'])} %, "
            f"test {_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])} %, "
            f"ensemble {ens} %"
        )
    lines.append(f"Verdicts ({comp['verdict_test']}, validation folds):")
    lines += [p["verdict"] for p in comp["pairs"]]
    return lines
