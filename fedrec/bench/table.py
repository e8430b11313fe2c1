"""The tidy results table of a grid: one row per run × metric × evaluation step.

Built from each cell's ``metrics.jsonl`` (every logged step: ``train/*`` metrics every round,
``test/*`` or ``valid/*`` metrics at evaluation steps), ``summary.json`` (final test metrics of
runs that do not log them per step, e.g. centralized runs at the best epoch), ``error.txt`` and
``bench.json`` (wall time, peak memory). Columns (see :data:`COLUMNS`):

* ``cell_id``, one column per grid axis (named by its dotted key; a key that clashes with a
  standard column is prefixed ``axis:``), ``seed``, ``dataset``, ``model``, ``attack``,
  ``defense`` (name, with parameters when set: ``trimmed_mean(beta=0.1)``);
* ``step`` (round for federated runs, epoch for centralized), ``epoch``, ``split``
  (train/valid/test), ``protocol`` (``full``/``sampled`` ranking protocol, ``train`` for training
  metrics, ``defense`` for the defense's detection metrics), ``metric`` (``ER@10``,
  ``detect_precision``, ``loss``...), ``value`` (NaN where the metric is undefined);
* ``status`` (finished/failed/incomplete/pending), ``error`` (first line of ``error.txt``),
  ``wall_time_s``, ``peak_memory_mb`` (the timing columns, :data:`TIMING_COLUMNS`).

A failed or unfinished cell keeps the rows it logged (all marked with its status), or one row
without a metric when it logged nothing. Rows are ordered by cell (grid order), step, split,
protocol, metric, so the same config and seed give identical rows apart from the timing columns.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from fedrec.bench.execute import CELLS_DIR, CELLS_FILE, read_cell_log
from fedrec.bench.grid import get_dotted, value_label
from fedrec.config import validate_config
from fedrec.errors import FedRecError
from fedrec.results import atomic_write, atomic_write_text

TABLE_PARQUET = "results.parquet"
TABLE_CSV = "results.csv"
STANDARD_COLUMNS = ["seed", "dataset", "model", "attack", "defense", "step", "epoch", "split",
                    "protocol", "metric", "value", "status", "error", "wall_time_s",
                    "peak_memory_mb"]
TIMING_COLUMNS = ("wall_time_s", "peak_memory_mb")
_TEXT_COLUMNS = ("cell_id", "dataset", "model", "attack", "defense", "split", "protocol", "metric",
                 "status", "error")
#: keys of a metrics.jsonl record that are not metrics
_RECORD_FIELDS = ("step", "epoch", "seconds")


def axis_column(key: str) -> str:
    """Table column of axis ``key``."""
    if key == "seed":
        return "seed"
    return f"axis:{key}" if key in STANDARD_COLUMNS or key == "cell_id" else key


def columns_for(axes: list[str]) -> list[str]:
    """All columns of the table of a grid with these axes, in order."""
    cols = ["cell_id"]
    for key in axes:
        col = axis_column(key)
        if col not in cols and col not in STANDARD_COLUMNS:
            cols.append(col)
    return cols + STANDARD_COLUMNS


def split_metric(key: str) -> tuple[str, str, str]:
    """``(split, protocol, metric)`` of a logged key (``test/full/ER@10`` → test, full, ER@10;
    ``train/defense/detect_recall`` → train, defense, detect_recall; ``train/loss`` → train,
    train, loss)."""
    parts = key.split("/")
    if len(parts) == 1:
        return "train", "train", key
    if len(parts) == 2:
        return parts[0], "train" if parts[0] == "train" else parts[0], parts[1]
    return parts[0], parts[1], "/".join(parts[2:])


def _number(value: Any) -> float:
    if value is None or isinstance(value, (str, list, dict)):
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _label(name: str, params: dict[str, Any]) -> str:
    return value_label({"name": name, **params}) if params else name


def _first_line(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text.splitlines()[0] if text else "failed"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def cell_rows(cell: dict[str, Any], run_dir: Path, axes: list[str]) -> list[dict[str, Any]]:
    """Rows of one cell (see module docstring)."""
    cfg = validate_config(cell["raw"], f"cell {cell['cell_id']}")
    dump = cfg.model_dump(mode="json")
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            summary = None
    error = _first_line(run_dir / "error.txt")
    records = _read_jsonl(run_dir / "metrics.jsonl")
    if summary is not None:
        status, error = "finished", None
    elif error is not None:
        status = "failed"
    elif run_dir.is_dir() and (records or (run_dir / "checkpoint.pt").is_file()):
        status = "incomplete"
    else:
        status = "pending"
    timing = read_cell_log(run_dir)
    if cfg.data.path:
        dataset = cfg.data.name if cfg.data.name != "synthetic" else Path(cfg.data.path).stem
    else:
        dataset = cfg.data.name
    if summary and summary.get("dataset"):
        dataset = str(summary["dataset"])
    common: dict[str, Any] = {"cell_id": cell["cell_id"]}
    assignment = cell.get("assignment", {})
    for key in axes:
        col = axis_column(key)
        if col in STANDARD_COLUMNS:
            continue
        if key in assignment:
            value = assignment[key]
        else:
            found, value = get_dotted(cell["raw"], key)
            if not found:
                value = get_dotted(dump, key)[1]
        common[col] = value if isinstance(value, (str, int, float, bool)) or value is None \
            else value_label(value)
    common.update(seed=cfg.seed, dataset=dataset, model=cfg.model.name,
                  attack=_label(cfg.attack.name, cfg.attack.params),
                  defense=_label(cfg.defense.name, cfg.defense.params))
    tail = {"status": status, "error": error,
            "wall_time_s": _number(timing.get("wall_time_s")),
            "peak_memory_mb": _number(timing.get("peak_memory_mb"))}
    unit_is_epoch = (summary or {}).get("unit") == "epoch" or cfg.mode == "centralized"
    rows: list[dict[str, Any]] = []
    evaluated: set[str] = set()
    for rec in records:
        step = int(rec["step"]) if "step" in rec else None
        epoch = rec.get("epoch", step if unit_is_epoch else None)
        items = []
        for key, value in rec.items():
            if key in _RECORD_FIELDS:
                continue
            split, protocol, metric = split_metric(key)
            if split != "train":
                evaluated.add(split)
            items.append((split, protocol, metric, _number(value)))
        for split, protocol, metric, value in sorted(items, key=lambda t: t[:3]):
            rows.append({**common, "step": step, "epoch": epoch, "split": split,
                         "protocol": protocol, "metric": metric, "value": value, **tail})
    if summary is not None and "test" not in evaluated and summary.get("test"):
        steps = [r["step"] for r in rows if r["step"] is not None]
        step = summary.get("best_step")
        if step is None or step < 0:
            step = max(steps) if steps else None
        epoch = step if unit_is_epoch else None
        for key, value in sorted(summary["test"].items()):
            protocol, metric = key.split("/", 1) if "/" in key else ("full", key)
            rows.append({**common, "step": step, "epoch": epoch, "split": "test",
                         "protocol": protocol, "metric": metric, "value": _number(value), **tail})
    if not rows:
        rows.append({**common, "step": None, "epoch": None, "split": None, "protocol": None,
                     "metric": None, "value": math.nan, **tail})
    return rows


def read_cells_file(out: str | Path) -> dict[str, Any]:
    """The expanded grid stored by ``fedrec bench`` (``<out>/cells.json``).

    Raises
    ------
    FedRecError
        ``out`` is not a bench output folder.
    """
    path = Path(out) / CELLS_FILE
    if not path.is_file():
        raise FedRecError(f"{out}: not a bench output folder (no {CELLS_FILE}; run `fedrec bench` "
                          "first)")
    return json.loads(path.read_text(encoding="utf-8"))


def build_table(out: str | Path) -> pd.DataFrame:
    """The tidy table of the bench in ``out`` (read from the cell directories)."""
    out = Path(out)
    meta = read_cells_file(out)
    axes = list(meta.get("axes", []))
    rows: list[dict[str, Any]] = []
    for cell in meta["cells"]:
        rows.extend(cell_rows(cell, out / CELLS_DIR / cell["cell_id"], axes))
    df = pd.DataFrame(rows, columns=columns_for(axes))
    for col in ("step", "epoch", "seed"):
        df[col] = pd.array(df[col].astype("Float64").round(), dtype="Int64")
    for col in ("value", "wall_time_s", "peak_memory_mb"):
        df[col] = df[col].astype("float64")
    for col in df.columns:
        if col in _TEXT_COLUMNS:
            df[col] = df[col].astype("string")
        elif col not in ("step", "epoch", "seed", "value", "wall_time_s", "peak_memory_mb"):
            values = [v for v in df[col] if not _missing(v)]
            kinds = {type(v) for v in values}
            if not values or kinds <= {str} or len(kinds) > 1 or kinds & {list, dict}:
                df[col] = pd.array([None if _missing(v) else str(v) for v in df[col]],
                                   dtype="string")
    return df


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def write_table(df: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """Write ``results.parquet`` and ``results.csv`` atomically; return their paths."""
    out = Path(out)
    parquet, csv = out / TABLE_PARQUET, out / TABLE_CSV

    def to_parquet(fh: Any) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        fh.write(buf.getvalue())

    atomic_write(parquet, to_parquet, "wb")
    atomic_write_text(csv, df.to_csv(index=False))
    return parquet, csv


def read_table(out: str | Path) -> pd.DataFrame:
    """The table of a bench folder: ``results.parquet`` if present, else rebuilt from the cells."""
    path = Path(out) / TABLE_PARQUET
    if path.is_file():
        return pd.read_parquet(path)
    return build_table(out)
