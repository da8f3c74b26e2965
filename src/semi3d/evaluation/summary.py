"""Summaries, files and tables of evaluation metrics.

``per_case`` everywhere is ``{case_id: {class_name: {metric: value}}}`` as returned, case by
case, by :func:`semi3d.evaluation.metrics.case_metrics` (dice/jaccard in [0, 1], hd95/asd in
voxels, hd95_mm/asd_mm in the units of the spacing, nsd in [0, 1] when asked for).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from semi3d.atomic import atomic_file
from semi3d.errors import InputError

__all__ = ["summarise", "write_metrics", "format_table", "table_markdown", "present", "CSV_COLUMNS"]

METRICS = ("dice", "jaccard", "hd95", "asd", "hd95_mm", "asd_mm")
OPTIONAL = ("nsd",)  # in metrics.csv only when some case has it
CSV_COLUMNS = ("case", "class", *METRICS)
MEAN_CLASS = "mean"


def present(columns, rows) -> list[str]:
    """``columns`` without the :data:`OPTIONAL` metrics that no row (a dict) holds a value of: a
    table's ``nsd`` column only when some case was evaluated with a tolerance."""
    rows = list(rows)
    return [c for c in columns if c not in OPTIONAL or any(r.get(c) is not None for r in rows)]


def _ordered_union(items) -> list[str]:
    seen: dict[str, None] = {}
    for key in items:
        seen.setdefault(key, None)
    return list(seen)


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def summarise(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over cases, per class and metric.

    Args:
        per_case: ``{case_id: {class_name: {metric: value}}}``.

    Returns:
        ``{class_name: {metric: mean, metric + "_std": std}}`` with classes in order of first
        appearance; a case lacking a class or metric is left out of that mean. The std is the
        population std (ddof=0) over cases. With more than one class a ``"mean"`` pseudo-class
        is added: for each case the metric is averaged over its foreground classes, then mean
        and std are taken over cases. An empty ``per_case`` gives ``{}``.

    Raises:
        InputError: a class is itself named ``"mean"`` while there is more than one class.
    """
    classes = _ordered_union(c for case in per_case.values() for c in case)
    summary: dict[str, dict[str, float]] = {}
    for cls in classes:
        rows = [case[cls] for case in per_case.values() if cls in case]
        metrics = _ordered_union(m for row in rows for m in row)
        summary[cls] = {}
        for m in metrics:
            mean, std = _stats([row[m] for row in rows if m in row])
            summary[cls][m] = mean
            summary[cls][m + "_std"] = std
    if len(classes) > 1:
        if MEAN_CLASS in classes:
            raise InputError("per_case", f"class name {MEAN_CLASS!r} is reserved for the class average")
        metrics = _ordered_union(m for case in per_case.values() for row in case.values() for m in row)
        summary[MEAN_CLASS] = {}
        for m in metrics:
            per_case_avg = [
                float(np.mean(vals))
                for case in per_case.values()
                if (vals := [row[m] for row in case.values() if m in row])
            ]
            mean, std = _stats(per_case_avg)
            summary[MEAN_CLASS][m] = mean
            summary[MEAN_CLASS][m + "_std"] = std
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _csv_text(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    metrics = present(METRICS + OPTIONAL, (row for c in per_case.values() for row in c.values()))
    writer.writerow(("case", "class", *metrics))
    for case_id, classes in per_case.items():
        for cls, row in classes.items():
            writer.writerow([case_id, cls, *(repr(float(row[m])) if m in row else "" for m in metrics)])
    return buf.getvalue()


def write_metrics(
    out_dir: Path, per_case: Mapping[str, Mapping[str, Mapping[str, float]]], extra: dict | None = None
) -> dict:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir`` atomically.

    Args:
        out_dir: folder to write into; created (with parents) if missing.
        per_case: ``{case_id: {class_name: {metric: value}}}``.
        extra: more top-level JSON entries (e.g. method, checkpoint, timing); must not use the
            keys ``"per_case"`` or ``"mean"``.

    Returns:
        The JSON payload ``{"per_case": ..., "mean": summarise(per_case), **extra}``.
        ``metrics.csv`` has one row per case x class with columns
        ``case,class,dice,jaccard,hd95,asd,hd95_mm,asd_mm`` (and ``nsd`` when some case has it;
        missing metrics left blank).
        Both files are written to temporary files in ``out_dir`` first and then renamed.

    Raises:
        InputError: ``out_dir`` cannot be created or written (nothing is written), or ``extra``
            reuses a reserved key.
    """
    out_dir = Path(out_dir)
    extra = dict(extra or {})
    clash = {"per_case", "mean"} & set(extra)
    if clash:
        raise InputError("extra", f"keys {sorted(clash)} are reserved")
    payload = {"per_case": per_case, "mean": summarise(per_case), **extra}
    json_text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    contents = {"metrics.json": json_text, "metrics.csv": _csv_text(per_case)}

    try:
        with ExitStack() as stack:  # both files written before either replaces its old version
            for name, text in contents.items():
                stack.enter_context(atomic_file(out_dir / name)).write_bytes(text.encode("utf-8"))
    except OSError as err:
        raise InputError(out_dir, f"cannot write metrics into this folder ({err.strerror or err})") from err
    return payload


def _fmt(row: Mapping[str, float], key: str, scale: float = 1.0) -> str:
    return f"{row[key] * scale:.2f}" if key in row else "-"


def format_table(summary: Mapping[str, Mapping[str, float]], title: str = "") -> Table:
    """A rich table of a :func:`summarise` result, one row per class (``"mean"`` last as given).

    Columns: Class, Dice % and Jaccard % (x100, 2 decimals), HD95 and ASD in voxels, HD95 and
    ASD in mm (2 decimals), and NSD % when any class has it; a missing metric is shown as ``-``.
    """
    table = Table(title=title or None)
    table.add_column("Class", style="bold")
    nsd = "nsd" in present(OPTIONAL, summary.values())
    for header in ("Dice %", "Jaccard %", "HD95 (vox)", "ASD (vox)", "HD95 (mm)", "ASD (mm)", *(("NSD %",) if nsd else ())):
        table.add_column(header, justify="right")
    for cls, row in summary.items():
        table.add_row(
            str(cls),
            _fmt(row, "dice", 100.0),
            _fmt(row, "jaccard", 100.0),
            _fmt(row, "hd95"),
            _fmt(row, "asd"),
            _fmt(row, "hd95_mm"),
            _fmt(row, "asd_mm"),
            *((_fmt(row, "nsd", 100.0),) if nsd else ()),
        )
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):.4f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table: a header of ``columns`` and one line per row.

    Floats are written with 4 decimals, missing keys as empty cells, ``|`` is escaped.
    The text ends with a newline.
    """
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
