"""``semi3d report RUN``: one HTML page (self-contained, images embedded as base64 PNG) and one
markdown page (PNG files beside it) per run.

Contents: the run at a glance (method, split sizes, training time), training curves from
``log.jsonl`` (loss and learning rate per model group, validation Dice and, for methods drawing
unlabelled patches, the unlabelled share ``n_u / (n_l + n_u)`` of each batch), the evaluation's
per-case metrics sorted worst first, overlays of ground truth vs prediction on the slice with the
most foreground of the best, median and worst case, the split and the resolved config.
"""
from __future__ import annotations

import html
import re
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text
from ..engine.rundir import RunDir
from ..errors import InputError
from ..evaluation.summary import METRICS, OPTIONAL, present, table_markdown
from ..losses import without_ignored
from .common import (case_means, draw_errors, draw_image, draw_labels, foreground_mean, load_metrics, png_base64,
                     pyplot, richest_slice, save_figure)

__all__ = ["build_report", "plot_curves", "metrics_rows", "pick_cases"]


# ---------------------------------------------------------------------------------- curves
def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def plot_curves(records: list[dict], path: Path, unlabelled_panel: bool | None = None) -> Path | None:
    """Training curves of ``log.jsonl`` records into ``path`` (PNG); None when there are none.

    Panels: ``loss/<group>``; ``val/dice`` (and ``val/dice_<class>``); ``lr/<group>``; with
    ``unlabelled_panel`` (default: when any record has ``n_u > 0``) the unlabelled share of each
    batch ``n_u / (n_l + n_u)``. A dashed line marks where M&N's stage 2 begins (``stage`` records).
    """
    train = [r for r in records if "n_l" in r or any(k.startswith("loss/") for k in r)]
    if not records:
        return None
    if unlabelled_panel is None:
        unlabelled_panel = any(r.get("n_u", 0) for r in records)
    panels = [("loss/", "loss per model group"), ("val/dice", "validation Dice"), ("lr/", "learning rate")]
    if unlabelled_panel:
        panels.append(("n_u", "unlabelled share of each batch"))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    stage2 = next((r["step"] for r in records if r.get("stage") == 2), None)
    for ax, (prefix, title) in zip(axes[0], panels):
        if prefix == "n_u":
            pts = [(r["step"], r["n_u"] / max(r["n_u"] + r.get("n_l", 0), 1)) for r in train if "n_u" in r]
            if pts:
                ax.plot(*zip(*pts), color="#4363d8", lw=1.2)
            ax.set_ylim(-0.03, 1.03)
            ax.set_ylabel("n_u / (n_l + n_u)")
        else:
            keys = sorted({k for r in records for k in r if k.startswith(prefix)})
            for k in keys:
                xs, ys = _series(records, k)
                val = prefix == "val/dice"
                ax.plot(xs, ys, marker="o" if val else None, ms=3, lw=1.6 if k == "val/dice" else 1.1,
                        label=k.split("/", 1)[1] if "/" in k else k)
            if len(keys) > 1:
                ax.legend(fontsize=7)
            if prefix == "val/dice":
                ax.set_ylim(-0.02, 1.02)
            if not keys:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        if stage2 is not None:
            ax.axvline(stage2, color="grey", ls="--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- metrics
def metrics_rows(per_case: dict, class_names: list[str] | None = None) -> list[dict]:
    """One row per case, worst first: ``case``, ``dice_<class>`` per class, and the means over the
    case's classes ``dice``, ``jaccard``, ``hd95``, ``asd`` (voxels), ``hd95_mm``, ``asd_mm`` and, when
    evaluated with a tolerance, ``nsd``.

    Sorted by mean Dice ascending (ties: HD95 descending, then case id)."""
    means = case_means(per_case)
    rows = []
    for cid, classes in per_case.items():
        row: dict[str, Any] = {"case": cid}
        for cls in class_names or list(classes):
            if cls in classes and "dice" in classes[cls]:
                row[f"dice_{cls}"] = classes[cls]["dice"]
        row.update({m: means[cid][m] for m in METRICS + OPTIONAL if m in means[cid]})
        rows.append(row)
    rows.sort(key=lambda r: (r.get("dice", 0.0), -r.get("hd95", 0.0), r["case"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def pick_cases(rows: list[dict]) -> list[tuple[str, str]]:
    """``[(role, case)]`` for the best, median and worst case of ``metrics_rows`` (worst first
    order), without repeating a case when there are fewer than three."""
    if not rows:
        return []
    order = [r["case"] for r in rows]  # worst first
    best, median, worst = order[-1], order[(len(order) - 1) // 2], order[0]
    out = [("best", best)]
    if median not in (best, worst):
        out.append(("median", median))
    if worst != best:
        out.append(("worst", worst))
    return out


def _load_for_overlay(run_dir: Path, cfg, metrics_path: Path, ids: list[str]):
    """``{case: (image (C,X,Y,Z), truth (X,Y,Z), prediction (X,Y,Z))}`` on the original grid; the
    evaluation's saved predictions are used when present, else the run's model predicts. Voxels
    under nnU-Net's ignore label are background in both, as in the metrics."""
    from ..data.volumes import read_volume
    from ..inference.predictor import Predictor, model_file

    reader = RunDir(run_dir).data_reader(cfg)
    predictor = None
    out = {}
    for cid in ids:
        case = reader.load(cid)
        if case.label is None:
            raise InputError(case.source or cid, "has no label to draw")
        saved = metrics_path.parent / "predictions" / f"{cid}.nii.gz"
        if saved.is_file():
            pred = np.asarray(read_volume(saved).array)
        else:
            if predictor is None:
                predictor = Predictor(model_file(run_dir), cfg.device, cfg.precision, cfg.inference)
            pred = predictor.segment(case)
        pred, truth = without_ignored(pred.astype(np.int64), np.asarray(case.label))  # as the metrics compare them
        out[cid] = (case.image, truth, pred)
    return out


def plot_cases(cases: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, float]], class_names: list[str],
               path: Path) -> Path:
    """One row per ``(role, case, image (C,X,Y,Z), truth (X,Y,Z), prediction (X,Y,Z), dice)``:
    image, ground truth, prediction and errors on the Z slice with the most ground-truth
    foreground; ``class_names`` includes the background (index 0)."""
    from matplotlib.patches import Patch

    from .common import CLASS_COLOURS

    plt = pyplot()
    k = len(class_names)
    fig, axes = plt.subplots(len(cases), 4, figsize=(12, 3.2 * len(cases) + 0.5), squeeze=False, layout="constrained")
    for row, (role, cid, image, truth, pred, dice) in zip(axes, cases):
        z = richest_slice(truth > 0, pred > 0)
        img = image[0, :, :, z]
        draw_image(row[0], img, f"{role}: {cid} (z={z})")
        draw_labels(row[1], img, truth[:, :, z], k, "ground truth")
        draw_labels(row[2], img, pred[:, :, z], k, f"prediction (Dice {dice:.3f})")
        draw_errors(row[3], img, truth[:, :, z], pred[:, :, z], "errors: red = extra, blue = missed")
    handles = [Patch(color=CLASS_COLOURS[(i - 1) % len(CLASS_COLOURS)], alpha=0.6, label=n)
               for i, n in enumerate(class_names) if i > 0]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------- the page
def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _html_table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}"
        ".note{background:#fff6d6;padding:.6em 1em;border-left:4px solid #e0b000}")


def build_report(run_dir: Path, out: Path | None = None, eval_dir: Path | str | None = None,
                 evaluate: bool = False, data_root: Path | None = None) -> dict[str, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``curves.png``, ``cases.png``)
    into ``out`` (default ``RUN/report``); returns ``{"html", "markdown", ...png}`` paths.

    The evaluation shown is ``eval_dir`` or the run's ``eval_validation`` (see
    :meth:`semi3d.engine.rundir.RunDir.metrics`); when there is none the report says so, or with
    ``evaluate`` the validation split is evaluated first (``semi3d evaluate RUN``).
    """
    run = RunDir(run_dir).require()
    run_dir = run.path
    cfg = run.load_config([f"data.root={data_root}"] if data_root else [])
    splits = run.load_splits()
    out = Path(out) if out else run_dir / "report"
    from ..engine.runlog import RunLog

    records = RunLog(run).records()
    metrics_path = run.metrics(eval_dir)
    if metrics_path is None and evaluate:  # before the report folder is made: a failure leaves none
        from ..evaluation.evaluate import evaluate_run

        evaluate_run(run_dir, "validation", data_root=data_root)
        metrics_path = run.eval_dir("validation") / "metrics.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the report folder: {e.strerror}") from None
    written: dict[str, Path] = {}
    notes: list[str] = []

    curves = plot_curves(records, out / "curves.png",
                         unlabelled_panel=cfg.method.name == "mn" or any(r.get("n_u", 0) for r in records))
    if curves:
        written["curves"] = curves
    else:
        notes.append("No training log (log.jsonl) in the run folder: no curves.")

    summary_rows, rows, metrics = [], [], None
    if metrics_path is None:
        notes.append("No evaluation found (RUN/eval_*/metrics.json): run `semi3d evaluate "
                     f"{run_dir}` or `semi3d report {run_dir} --evaluate` for the metrics table and the overlays.")
    else:
        metrics = load_metrics(metrics_path)
        names = list(next(iter(metrics["per_case"].values())).keys())
        rows = metrics_rows(metrics["per_case"], names)
        for cls, row in metrics.get("mean", {}).items():
            summary_rows.append({"class": cls, **{m: row.get(m) for m in _MEANS[1:] if m in row}})
        picks = pick_cases(rows)
        try:
            loaded = _load_for_overlay(run_dir, cfg, metrics_path, [c for _, c in picks])
            dice = {r["case"]: r["dice"] for r in rows}
            written["cases"] = plot_cases([(role, cid, *loaded[cid], dice[cid]) for role, cid in picks],
                                          ["background", *names], out / "cases.png")
        except InputError as e:
            notes.append(f"Overlays skipped: {e}")

    info = _run_info(run_dir, cfg, splits, records, metrics, metrics_path)
    blocks = _blocks(cfg, run_dir, info, notes, summary_rows, rows, splits, written)
    md, page = _markdown(blocks, written), _html(blocks, written, cfg.name)
    write_text(out / "report.md", md)
    write_text(out / "report.html", page)
    written.update(markdown=out / "report.md", html=out / "report.html")
    return written


def _inference_net(run_dir: Path, cfg) -> str:
    """The network the run's saved model predicts with (``checkpoints/model_best.pt`` or
    ``model_final.pt``; e.g. ``slicewise2d`` for ``supervised2d``), else the configured 3D network."""
    from ..engine import checkpoint as ckpt

    saved = RunDir(run_dir).saved_model()
    if saved is not None:
        net = ckpt.load(saved)["net"]
        return f"{net['name']} {json.dumps(net['options'])}"
    return f"{cfg.model.net3d.name} {json.dumps(cfg.model.net3d.options)}"


def _run_info(run_dir: Path, cfg, splits, records, metrics, metrics_path) -> list[tuple[str, str]]:
    info = [("run", str(run_dir)), ("method", cfg.method.name), ("inference network", _inference_net(run_dir, cfg))]
    if cfg.model.net2d is not None:
        info.append(("2D network", f"{cfg.model.net2d.name}"))
    info.append(("cases", ", ".join(f"{k} {len(v)}" for k, v in splits.items())))
    ts = RunDir(run_dir).summary
    if ts.is_file():
        s = json.loads(ts.read_text())
        info.append(("training", f"{s.get('iterations')} iterations in {s.get('wall_time_s', 0):.0f} s, "
                                 f"selection {s.get('selection')}, best validation Dice {s.get('best_val_dice', -1):.4f} "
                                 f"at step {s.get('best_step')}"))
    else:
        last = records[-1]["step"] if records else 0
        info.append(("training", f"not finished (last logged step {last} of {cfg.train.iterations})"))
    if metrics is not None:
        fg = foreground_mean(metrics["mean"])
        info.append(("evaluation", f"{metrics_path.parent.name}: {len(metrics['per_case'])} cases, model step "
                                   f"{metrics.get('model_step')}, mean Dice {fg.get('dice', float('nan')):.4f}, "
                                   f"HD95 {fg.get('hd95', float('nan')):.2f} voxels"))
    return info


def _case_cols(rows: list[dict]) -> list[str]:
    per_class = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]
    multi = len(per_class) > 1
    return present(["rank", "case", *(per_class if multi else []), *METRICS, *OPTIONAL], rows)


_MEANS = ["class", "dice", "dice_std", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm", "nsd"]


def _blocks(cfg, run_dir, info, notes, summary_rows, rows, splits, written) -> list[tuple]:
    """The page as blocks both renderers share: ``("h1"|"h2"|"p"|"note"|"pre", text)``,
    ``("info", [(key, value)])``, ``("table", rows, columns)``, ``("img", alt, written key)``,
    ``("list", [(split, ids)])``; text in ``p`` may hold `code` spans."""
    out: list[tuple] = [("h1", f"Run report: {cfg.name}"), ("info", info), *(("note", n) for n in notes)]
    if "curves" in written:
        out += [("h2", "Training curves"), ("img", "training curves", "curves")]
    if rows:
        out += [("h2", "Evaluation"), ("p", "Mean per class (Dice, Jaccard in [0, 1]; HD95, ASD in voxels and mm):"),
                ("table", summary_rows, present(_MEANS, summary_rows)),
                ("p", "Per case, worst first (means over the foreground classes):"),
                ("table", rows, _case_cols(rows))]
    if "cases" in written:
        out += [("h2", "Best, median and worst case"),
                ("p", "The axial (Z) slice with the most ground-truth foreground."), ("img", "best, median and worst case", "cases")]
    text = RunDir(run_dir).config.read_text()
    out += [("h2", "Split"), ("list", list(splits.items())), ("h2", "Configuration"),
            ("p", "`config.yaml` of the run:"), ("pre", text if text.endswith("\n") else text + "\n")]
    return out


def _markdown(blocks: list[tuple], written: dict[str, Path]) -> str:
    md = {"h1": "# {}\n", "h2": "## {}\n", "p": "{}\n", "note": "> {}\n", "pre": "```yaml\n{}```\n"}
    parts = []
    for kind, *args in blocks:
        if kind in md:
            parts.append(md[kind].format(args[0]))
        elif kind == "info":
            parts += [f"- **{k}**: {v}" for k, v in args[0]] + [""]
        elif kind == "table":
            parts.append(table_markdown(args[0], args[1]))
        elif kind == "img":
            parts.append(f"![{args[0]}]({written[args[1]].name})\n")
        else:  # list
            parts += [f"- **{k}** ({len(v)}): {', '.join(v) if v else '-'}" for k, v in args[0]] + [""]
    return "\n".join(parts)


def _html(blocks: list[tuple], written: dict[str, Path], title: str) -> str:
    e = html.escape
    body = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(args[0])}</{kind}>")
        elif kind == "p":
            body.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", e(args[0])) + "</p>")
        elif kind == "note":
            body.append(f"<p class='note'>{e(args[0])}</p>")
        elif kind == "pre":
            body.append(f"<pre>{e(args[0])}</pre>")
        elif kind == "info":
            body.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td style='text-align:left'>{e(v)}</td></tr>"
                                            for k, v in args[0]) + "</table>")
        elif kind == "table":
            body.append(_html_table(args[0], args[1]))
        elif kind == "img":
            body.append(f"<img alt='{e(args[0])}' src='{png_base64(written[args[1]])}'>")
        else:  # list
            body.append("<ul>" + "".join(f"<li><b>{e(k)}</b> ({len(v)}): {e(', '.join(v) if v else '-')}</li>"
                                         for k, v in args[0]) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)} - semi3d report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
