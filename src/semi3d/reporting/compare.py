"""``semi3d compare RUN... --out DIR``: the methods table of several evaluated runs
(``compare.md`` / ``compare.json``: method, labelled count, mean Dice / Jaccard / HD95 / ASD) and a
box plot of per-case Dice across runs (``dice_boxplot.png``).

Each run's evaluation is its ``eval_validation/metrics.json`` (or ``--eval NAME``, see
:meth:`semi3d.engine.rundir.RunDir.metrics`); a folder holding ``metrics.json`` and no run (``semi3d
evaluate-folder``'s output for another tool's predictions) is a row of method ``external``; means are over the foreground classes (the
summary's ``"mean"`` row when there are several). Runs evaluated on different cases are flagged.
The folds of one cross-validation (runs whose configs differ only in
``data.splits.validation.fold``, name and machine settings, each scored on its validation split)
add one row over their validation cases pooled.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from ..errors import InputError
from ..evaluation.summary import present, summarise, table_markdown
from ..engine.rundir import RunDir
from .common import case_means, foreground_mean, load_metrics, pyplot, save_figure

__all__ = ["compare_runs", "COLUMNS"]

COLUMNS = ["run", "method", "labelled", "unlabelled", "cases", "dice", "dice_std", "jaccard", "hd95", "asd",
           "hd95_mm", "asd_mm", "nsd"]  # nsd: a column only when some run was evaluated with a tolerance


def _means(summary: dict) -> dict:
    """The metric columns of a row: ``summary``'s means over the foreground classes."""
    fg = foreground_mean(summary)
    return {m: fg.get(m) for m in COLUMNS[5:]}


def _case_dice(per_case: dict) -> dict[str, float]:
    """Per case, the Dice averaged over its foreground classes."""
    return {cid: v["dice"] for cid, v in case_means(per_case).items() if "dice" in v}


def _fold_key(cfg, splits, metrics) -> tuple[str, int] | None:
    """A run that is one fold of a cross-validation (``data.splits.validation.fold``) scored on its
    own validation cases: (its config without the fold, the run's name and machine settings; the
    fold). The runs of one such config are pooled into a cross-validation row."""
    val = cfg.data.splits.validation if cfg is not None else None
    if val is None or val.fold is None or set(metrics["per_case"]) != set(splits["validation"]):
        return None
    d = cfg.model_dump(mode="json", exclude={"name": True, "output_dir": True, "threads": True, "device": True})
    d["data"]["splits"]["validation"]["fold"] = None
    return json.dumps(d, sort_keys=True), val.fold


def _cross_validation_rows(folds: dict[str, list[tuple[int, dict, dict]]]) -> list[tuple[dict, dict]]:
    """Per config with two or more folds: one row over all their validation cases pooled (nnU-Net's
    cross-validation result: every case scored by the model that did not train on it)."""
    out = []
    for runs in folds.values():
        nums = sorted(k for k, _, _ in runs)
        if len(runs) < 2 or len(set(nums)) < len(nums):
            continue
        pooled = {cid: v for _, _, m in runs for cid, v in m["per_case"].items()}
        first = runs[0][1]
        span = {k: sorted({r[k] for _, r, _ in runs}) for k in ("labelled", "unlabelled")}
        row = {**first, "run": f"{first['run']} (cross-validation, folds {','.join(map(str, nums))})",
               "path": " ".join(r["path"] for _, r, _ in runs), "cases": len(pooled),
               **{k: v[0] if len(v) == 1 else f"{v[0]}-{v[-1]}" for k, v in span.items()}, **_means(summarise(pooled))}
        out.append((row, _case_dice(pooled)))
    return out


def _run_row(run_dir: Path, eval_name: str | None) -> tuple[dict, dict[str, float], tuple | None]:
    """A run folder's row, or that of a folder of scored predictions (``semi3d evaluate-folder``'s
    ``metrics.json``, e.g. another tool's): method ``external``, no split counts; then the per-case
    Dice and, for a cross-validation fold, (config key, fold, metrics) (:func:`_fold_key`)."""
    run = RunDir(run_dir)
    if (run.path / "metrics.json").is_file() and not run.config.is_file():
        path, cfg, splits = run.path / "metrics.json", None, None
    else:
        run_dir, path = run.require().path, run.metrics(eval_name)
        if path is None:
            raise InputError(run_dir, f"no evaluation metrics (looked for {run.eval_dir('validation') / 'metrics.json'}); "
                                      f"run `semi3d evaluate {run_dir}` first")
        cfg, splits = run.load_config(), run.load_splits()
    metrics = load_metrics(path)
    row = {"run": Path(run_dir).name if cfg is None else cfg.name, "path": str(run_dir),
           "evaluation": str(path.parent.name), "method": "external" if cfg is None else cfg.method.name,
           "labelled": None if splits is None else len(splits["labelled"]),
           "unlabelled": None if splits is None else len(splits["unlabelled"]),
           "cases": len(metrics["per_case"]), **_means(metrics["mean"])}
    fold = _fold_key(cfg, splits, metrics)
    return row, _case_dice(metrics["per_case"]), None if fold is None else (*fold, metrics)


def compare_runs(runs: list[Path], out: Path, eval_name: str | None = None) -> dict:
    """Write ``compare.md``, ``compare.json`` and ``dice_boxplot.png`` into ``out``; returns the
    JSON payload ``{"rows": [...], "per_case_dice": {run: {case: dice}}, "same_cases": bool}``."""
    if not runs:
        raise InputError("compare", "give at least one run folder")
    rows, per_case, folds = [], {}, {}
    scored = [_run_row(Path(r), eval_name) for r in runs]
    for row, _, fold in scored:
        if fold is not None:
            folds.setdefault(fold[0], []).append((fold[1], row, fold[2]))
    pooled = _cross_validation_rows(folds)
    for row, dice in [(row, dice) for row, dice, _ in scored] + pooled:
        label = row["run"]
        n = 2
        while label in per_case:  # two runs of the same name (different output folders)
            label = f"{row['run']} ({n})"
            n += 1
        row["run"] = label
        rows.append(row)
        per_case[label] = dice
    case_sets = {frozenset(d) for d in per_case.values()}
    same = len(case_sets) == 1
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the output folder: {e.strerror}") from None
    out = Path(out)
    plot = _boxplot(per_case, out / "dice_boxplot.png")
    payload = {"rows": rows, "per_case_dice": per_case, "same_cases": same, "boxplot": plot.name}
    write_text(out / "compare.json", json.dumps(payload, indent=1))
    cv = " (a cross-validation's folds each on their own cases; its pooled row covers them all)" if pooled else ""
    note = "" if same else (f"\n> Note: the runs were evaluated on different cases{cv}; their means are not "
                            "directly comparable.\n")
    md = ("# Methods comparison\n\nMeans over the evaluated cases and the foreground classes (Dice, Jaccard, "
          "NSD in [0, 1]; HD95, ASD in voxels and mm).\n\n" + table_markdown(rows, present(COLUMNS, rows)) + note
          + f"\n![per-case Dice]({plot.name})\n")
    write_text(out / "compare.md", md)
    return payload


def _boxplot(per_case: dict[str, dict[str, float]], path: Path) -> Path:
    """Box plot of per-case Dice, one box per run, the cases drawn as points on top."""
    import numpy as np

    plt = pyplot()
    names = list(per_case)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) + 2), 4.0))
    data = [list(per_case[n].values()) for n in names]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center")
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6, color="#4363d8", zorder=3)
    ax.set_ylabel("Dice per case (mean over foreground classes)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("per-case Dice")
    fig.tight_layout()
    return save_figure(fig, path)
