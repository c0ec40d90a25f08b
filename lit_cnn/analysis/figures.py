"""The figures of a comparison: the paired fold runs per model, and per pair the posterior
of the difference with the region of practical equivalence shaded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as _st

from lit_cnn.analysis.bayes import BayesResult, format_prob


def posterior_name(a: str, b: str) -> str:
    """The file name of pair (a, b)'s posterior plot: ``posterior_<b>_vs_<a>.png``.

    Args:
        a: The model listed first.
        b: The model compared with it.
    """
    return f"posterior_{b}_vs_{a}.png"


def comparison_figure(comp: Mapping[str, Any]):  # -> matplotlib Figure
    """Two panels, validation-fold and test accuracy per model: a point per fold run, the
    same fold run joined across models, a bar at each model's mean.

    Args:
        comp: The contents of comparison.json.
    """
    from matplotlib.figure import Figure

    models, k, repeats = comp["models"], comp["k"], comp["repeats"]
    legend_rows = -(-(repeats + 1) // 4)  # a line per repetition and the mean, 4 a row
    height = 4.5 + 0.25 * legend_rows
    fig = Figure(figsize=(max(6.0, 2.2 * len(models) + 2), height))
    axes = fig.subplots(1, 2, sharey=False)
    x = np.arange(len(models))
    colors = [f"C{r % 10}" for r in range(repeats)]
    for ax, key, title in zip(
        axes,
        ("val_acc", "test_acc"),
        ("Validation fold (the scores the verdicts rest on)", "Test set"),
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
    # Room at the bottom for the shared legend, below the rotated model names.
    fig.tight_layout(rect=(0, (0.1 + 0.22 * legend_rows) / height, 1, 1))
    return fig


def posterior_figure(a: str, b: str, res: BayesResult, unit: str = "pt"):  # -> Figure
    """The posterior density of ``b - a`` with the ROPE shaded and the three probabilities.

    Args:
        a: The model listed first.
        b: The model compared with it.
        res: The test's result.
        unit: The differences' unit, for the axis label.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    rope = res.rope
    ax.axvspan(-rope, rope, color="0.85", label=f"ROPE ±{rope:g} {unit}", zorder=0)
    if res.scale > 0:
        posterior = _st.t(res.df, loc=res.mean, scale=res.scale)
        lo = min(posterior.ppf(0.001), -1.5 * rope, res.mean - 1)
        hi = max(posterior.ppf(0.999), 1.5 * rope, res.mean + 1)
        xs = np.linspace(lo, hi, 400)
        ys = posterior.pdf(xs)
        ax.plot(xs, ys, color="C0", label="posterior of the mean difference")
        for mask, color in ((xs < -rope, "C3"), (xs > rope, "C2")):
            ax.fill_between(xs, ys, where=mask, color=color, alpha=0.35, linewidth=0)
        ax.fill_between(xs, ys, where=np.abs(xs) <= rope, color="0.5", alpha=0.35, linewidth=0)
    else:
        ax.axvline(res.mean, color="C0", label="posterior (a point mass)")
        ax.set_xlim(min(-1.5 * rope, res.mean - 1), max(1.5 * rope, res.mean + 1))
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel(f"{b} − {a} ({unit}), validation-fold accuracy")
    ax.set_yticks([])
    ax.set_title(
        f"{b} better: {format_prob(res.p_b_better)}   equivalent: "
        f"{format_prob(res.p_equivalent)}   {a} better: {format_prob(res.p_a_better)}",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig
