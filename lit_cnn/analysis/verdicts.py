"""What a comparison writes and prints: the verdicts in words, comparison.md, the figures,
comparison.json and the closing summary lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from lit_cnn.analysis.bayes import BayesResult, format_prob
from lit_cnn.analysis.figures import comparison_figure, posterior_figure, posterior_name
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


def _holm_part(p: float, p_holm: float | None, family: int) -> tuple[str, float]:
    """The p-value text, with Holm's adjusted value when several pairs were tested, and the
    p-value the verdict rests on."""
    if family > 1 and p_holm is not None:
        return f"{format_p(p)}, Holm-adjusted over {family} pairs {format_p(p_holm)}", p_holm
    return format_p(p), p


def verdict(
    a: str,
    b: str,
    res: TTestResult | Mapping[str, Any],
    overall_mean: float | None = None,
    family: int = 1,
) -> str:
    """One line in plain words, e.g. ``B vs A: +0.31 pt (95% CI −0.12 to +0.74), p = 0.14:
    no significant difference at 5%``.

    Args:
        a: The later model; the difference is ``a - b``.
        b: The earlier model.
        res: The test the verdict rests on, or its dict (with ``p_holm`` when adjusted).
        overall_mean: For the 5x2cv test, whose estimate is one fold's difference: the mean
            of all ten differences, added at the end so that the single fold is not taken
            for the average.
        family: How many pairs were tested; above 1 the verdict rests on ``res["p_holm"]``.
    """
    p_holm = None
    if not isinstance(res, TTestResult):
        p_holm = res.get("p_holm")
        res = TTestResult(**{f.name: res[f.name] for f in fields(TTestResult)})
    level = f"{round(100 * res.confidence)}%"
    where = " in the first fold" if overall_mean is not None else ""
    p_text, p = _holm_part(res.p, p_holm, family)
    head = (
        f"{a} vs {b}: {signed(res.mean)} pt{where} ({level} CI {signed(res.ci_low)} to "
        f"{signed(res.ci_high)}), {p_text}"
    )
    pct = f"{round(100 * ALPHA)}%"
    if not p < ALPHA:
        line = f"{head}: no significant difference at {pct}"
    else:
        line = f"{head}: significant at {pct}, {a if res.mean > 0 else b} is better"
    if overall_mean is not None:
        line += f" (mean of all {res.n} folds {signed(overall_mean)} pt)"
    return line


def ftest_verdict(a: str, b: str, f_test: Mapping[str, Any], family: int = 1) -> str:
    """The combined 5x2cv F-test's verdict in one line, e.g. ``B vs A: mean +0.25 pt over the
    10 folds, combined 5×2cv F = 1.62 (10 and 5 df), p = 0.31: no significant difference at
    5%``.

    Args:
        a: The model listed first.
        b: The model compared with it; the mean difference is ``b - a``.
        f_test: The test's dict (with ``p_holm`` when adjusted).
        family: How many pairs were tested; above 1 the verdict rests on ``p_holm``.
    """
    p_text, p = _holm_part(f_test["p"], f_test.get("p_holm"), family)
    head = (
        f"{b} vs {a}: mean {signed(f_test['mean'])} pt over the 10 folds, combined 5×2cv "
        f"F = {f_test['F']:.2f} ({f_test['df1']} and {f_test['df2']} df), {p_text}"
    )
    pct = f"{round(100 * ALPHA)}%"
    if not p < ALPHA:
        return f"{head}: no significant difference at {pct}"
    return f"{head}: significant at {pct}, {b if f_test['mean'] > 0 else a} is better"


# ----------------------------------------------------------------------------- files

HOW_TO_READ = "How to read this: docs/comparing.md."
REFERENCES = (
    "References: Benavoli, Corani, Demšar and Zaffalon (2017), Time for a change: a tutorial "
    "for comparing multiple classifiers through Bayesian analysis, JMLR 18; Corani and "
    "Benavoli (2015), A Bayesian approach for comparing cross-validated algorithms on "
    "multiple data sets, Machine Learning 100; Nadeau and Bengio (2003), Inference for the "
    "generalization error, Machine Learning 52; Dietterich (1998), Approximate statistical "
    "tests for comparing supervised classification learning algorithms, Neural Computation "
    "10; Alpaydın (1999), Combined 5×2 cv F test for comparing supervised classification "
    "learning algorithms, Neural Computation 11; Bouckaert and Frank (2004), Evaluating the "
    "replicability of significance tests for comparing learning algorithms, PAKDD; Holm "
    "(1979), A simple sequentially rejective multiple test procedure, Scand. J. Statistics 6."
)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _p_cell(p: float | None) -> str:
    if p is None:
        return ""
    return format_p(p).removeprefix("p = ").removeprefix("p ")


def _test_row(label: str, scores: str, res: Mapping[str, Any] | None) -> str:
    if res is None:
        return f"| {label} | {scores} | too few pairs | | | | | | |"
    if "F" in res:  # the combined F-test: no interval; its estimate is the mean difference
        return (
            f"| {label} | {scores} | combined 5×2cv F-test | {signed(res['mean'])} | | "
            f"F = {res['F']:.2f} | {res['df1']}, {res['df2']} | {_p_cell(res['p'])} | "
            f"{_p_cell(res.get('p_holm'))} |"
        )
    return (
        f"| {label} | {scores} | {res['test']} | {signed(res['mean'])} | "
        f"{signed(res['ci_low'])} to {signed(res['ci_high'])} | t = {signed(res['t'])} | "
        f"{res['df']} | {_p_cell(res['p'])} | {_p_cell(res.get('p_holm'))} |"
    )


def _bayes_section(comp: Mapping[str, Any]) -> list[str]:
    lines = [
        f"## Bayesian verdicts (correlated t-test on the validation-fold accuracies, ROPE "
        f"±{comp['rope']:g} pt; a probability of {comp['bayes_decides']:g} decides)",
        "",
        *[f"- {p['bayes_verdict']}" for p in comp["pairs"]],
        "",
        "| B − A | mean (pt) | scale (pt) | df | p(B better) | p(equivalent) | p(A better) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in comp["pairs"]:
        r = p["bayes"]
        if r is None:
            lines.append(f"| {p['b']} − {p['a']} | too few pairs | | | | | |")
            continue
        lines.append(
            f"| {p['b']} − {p['a']} | {signed(r['mean'])} | {r['scale']:.2f} | {r['df']} | "
            f"{format_prob(r['p_b_better'])} | {format_prob(r['p_equivalent'])} | "
            f"{format_prob(r['p_a_better'])} |"
        )
    lines.append("")
    lines += [f"![{p['b']} vs {p['a']}]({posterior_name(p['a'], p['b'])})" for p in comp["pairs"]]
    return [*lines, ""]


def _mcnemar_section(comp: Mapping[str, Any]) -> list[str]:
    rows = [(p, row) for p in comp["pairs"] for row in p["mcnemar"]]
    if not rows:
        return []
    lines = [
        f"## McNemar's exact test on the {comp['n_test']} test images (fold ensembles, per "
        "repetition)",
        "",
        "| B − A | repetition | only B right (n01) | only A right (n10) | p | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p, row in rows:
        lines.append(
            f"| {p['b']} − {p['a']} | {row['repetition']} | {row['n01']} | {row['n10']} | "
            f"{_p_cell(row['p'])} | {_p_cell(row.get('p_holm'))} |"
        )
    return [*lines, ""]


def comparison_markdown(comp: Mapping[str, Any]) -> str:
    """The comparison as Markdown: the Bayesian verdicts, the frequentist verdicts, the
    models, the per-pair tests, McNemar per repetition, the fold runs.

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
    family = comp["holm_family"]
    adjusted = f", p-values Holm-adjusted over the {family} pairs" if family > 1 else ""
    lines = [
        f"# Comparison {comp.get('name', '')}: {', '.join(models)}",
        "",
        f"{design_text}, split seeds {seeds}; every model trained on the same folds. Data: "
        f"{comp['data']} ({comp['n_train_total']} training images; each fold trains on "
        f"{comp['n_fold_train']:.0f} and validates on {comp['n_fold_val']:.0f}; "
        f"{comp['n_test']} test images). Differences B − A in percentage points, A listed "
        f"first. {HOW_TO_READ}",
        "",
        *_bayes_section(comp),
        f"## Frequentist verdicts ({comp['verdict_test']} on the validation-fold accuracies"
        f"{adjusted})",
        "",
        *[f"- {p['verdict']}" for p in comp["pairs"]],
        "",
        "## Models",
        "",
        "| model | lr | L2 | optimizer | validation acc % (mean ± std) | test acc % "
        "(mean ± std) | ensemble test acc % per repetition | out-of-fold acc % per "
        "repetition | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models:
        s, hp = comp["per_model"][m], comp.get("hparams", {}).get(m, {})
        val = f"{_pct(s['val_acc_mean'])} ± {_pct(s['val_acc_std'])}"
        test = f"{_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])}"
        ens = ", ".join(_pct(e) for e in s["ensemble_test_acc"])
        oof = ", ".join(_pct(e) for e in s.get("oof_acc", []))
        lines.append(
            f"| {m} | {hp.get('lr', '')} | {hp.get('l2', '')} | {hp.get('optimizer', '')} | "
            f"{val} | {test} | {ens} | {oof} | {s['fit_seconds']:.0f} |"
        )
    lines += [
        "",
        "Mean ± population standard deviation over all "
        f"{k * repeats} fold runs. The validation accuracy is each fold's at its best epoch "
        "(lowest validation loss); the test accuracy is that epoch's model on the whole test "
        "set; the ensemble averages the softmax of a repetition's fold models; the "
        "out-of-fold accuracy scores each training image with the fold model that validated "
        "on it.",
        "",
        "## Pairs",
        "",
        "| B − A | scores | test | estimate (pt) | 95% CI (pt) | statistic | df | p | p (Holm) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in comp["pairs"]:
        label = f"{p['b']} − {p['a']}"
        n = p["n_pairs"]
        lines.append(_test_row(label, f"validation folds ({n} paired)", p["corrected"]))
        lines.append(_test_row("", f"test set ({n} paired fold models)", p["paired_test"]))
        if comp["scheme"] == "5x2cv":
            # Its estimate is the first fold's difference, not a mean.
            lines.append(_test_row("", "validation folds (5×2; first fold)", p["dietterich"]))
            lines.append(_test_row("", "validation folds (5×2)", p["f_test"]))
    lines += ["", *_mcnemar_section(comp), "## Fold runs (accuracy %)", ""]
    header = "| repetition | seed | fold | " + " | ".join(f"{m} val | {m} test" for m in models)
    lines += [header + " |", "|" + " --- |" * (3 + 2 * len(models))]
    for r in range(repeats):
        for f in range(k):
            cells = []
            for m in models:
                s = comp["per_model"][m]
                cells += [_pct(s["val_acc"][r][f]), _pct(s["test_acc"][r][f])]
            lines.append(f"| {r} | {comp['seeds'][r]} | {f} | " + " | ".join(cells) + " |")
    lines += ["", REFERENCES, ""]
    return "\n".join(lines)


def write_comparison(cmp_dir: Path, comp: Mapping[str, Any]) -> None:
    """Writes comparison.json, comparison.md, comparison.png and a posterior plot per pair
    into ``cmp_dir``, atomically.

    Args:
        cmp_dir: The comparison directory.
        comp: The comparison (see :func:`lit_cnn.analysis.pairs.analyse`).
    """
    save_figure(comparison_figure(comp), cmp_dir / "comparison.png")
    for p in comp["pairs"]:
        if p["bayes"] is not None:
            fig = posterior_figure(p["a"], p["b"], BayesResult(**p["bayes"]))
            save_figure(fig, cmp_dir / posterior_name(p["a"], p["b"]))
    write_text(cmp_dir / "comparison.md", comparison_markdown(comp))
    write_json(cmp_dir / "comparison.json", comp)


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
    lines.append(
        f"Bayesian verdicts (validation folds, ROPE ±{comp['rope']:g} pt; "
        "undecided: p(B better) / p(equivalent) / p(A better)):"
    )
    lines += [p["bayes_verdict"] for p in comp["pairs"]]
    lines.append(f"Verdicts ({comp['verdict_test']}, validation folds):")
    lines += [p["verdict"] for p in comp["pairs"]]
    return lines
