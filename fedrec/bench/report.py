"""Markdown report and plots of a bench folder (``fedrec report DIR``).

From the tidy table (:mod:`fedrec.bench.table`):

* **final evaluation** = each finished run's last test evaluation; numbers are mean ± sample
  standard deviation over the runs of a group (seeds), where a group is attack × defense ×
  dataset × model, plus any other grid axis that varies inside those (e.g. ``attack.fraction``);
* attack success ER@5/10/20, utility HR@10 and NDCG@10, each in both protocols (``full``
  ranking over all items, ``sampled`` candidates);
* detection precision/recall of client-filtering defenses: per run the mean over the rounds
  where it is defined (rounds with malicious clients present / clients flagged), then mean ± std;
* plots (matplotlib, Agg): ER@10 heatmap attack × defense, ER@10 and HR@10 over epochs (one line
  per attack, one panel per defense), utility vs robustness (HR@10 against ER@10 per defense).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedrec.bench.table import STANDARD_COLUMNS, build_table, read_cells_file, write_table
from fedrec.results import atomic_write, atomic_write_text

REPORT = "report.md"
BASE_GROUP = ["dataset", "model", "attack", "defense"]
ER_METRICS = ["ER@5", "ER@10", "ER@20"]
UTILITY_METRICS = ["HR@10", "NDCG@10"]
PROTOCOLS = ["full", "sampled"]
DETECTION = ["detect_precision", "detect_recall"]


# ---------------------------------------------------------------------------- selections


def _ordered(values: pd.Series) -> list[Any]:
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(v for v in values if not pd.isna(v)))


def _group_title(columns: list[str], key: Any) -> str:
    """``col=value, ...`` of a ``groupby`` key over ``columns``."""
    keys = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{g}={v}" for g, v in zip(columns, keys, strict=True))


def group_columns(df: pd.DataFrame) -> list[str]:
    """attack × defense × dataset × model, plus axis columns that vary inside those groups."""
    cols = list(BASE_GROUP)
    extra_candidates = [c for c in df.columns if c not in STANDARD_COLUMNS and c != "cell_id"]
    cells = df.drop_duplicates("cell_id")
    for col in extra_candidates:
        if cells.groupby(BASE_GROUP, dropna=False)[col].nunique(dropna=False).max() > 1:
            cols.append(col)
    return cols


def final_evaluation(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each finished run's last test evaluation."""
    test = df[(df["status"] == "finished") & (df["split"] == "test")]
    if test.empty:
        return test
    last = test.groupby("cell_id")["step"].transform("max")
    return test[test["step"] == last]


def detection_per_run(df: pd.DataFrame) -> pd.DataFrame:
    """Per finished run, the mean over rounds of detection precision and recall."""
    det = df[(df["status"] == "finished") & (df["protocol"] == "defense")
             & (df["metric"].isin(DETECTION))]
    if det.empty:
        return det
    keep = [c for c in df.columns if c not in ("step", "epoch", "value", "wall_time_s",
                                                "peak_memory_mb", "error")]
    return det.groupby(keep, dropna=False, sort=False)["value"].mean().reset_index()


def summarize(rows: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """mean, std, n over runs per group × protocol × metric."""
    if rows.empty:
        return pd.DataFrame(columns=[*groups, "protocol", "metric", "mean", "std", "n"])
    g = rows.groupby([*groups, "protocol", "metric"], dropna=False, sort=False)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    return out


# ---------------------------------------------------------------------------- formatting


def fmt(mean: float, std: float, n: int) -> str:
    """``0.412 ± 0.031`` (just the mean for a single run; ``–`` when undefined)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n is None or n < 2 or std is None or math.isnan(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_table(stats: pd.DataFrame, groups: list[str], shown_groups: list[str],
                  columns: list[tuple[str, str]], order: pd.DataFrame,
                  runs: dict[tuple, int]) -> str:
    """Markdown table: one row per group (with its number of finished runs), one column per
    (protocol, metric)."""
    lookup = {}
    for rec in stats.to_dict("records"):
        key = tuple(rec[g] for g in groups) + (rec["protocol"], rec["metric"])
        lookup[key] = rec
    header = [*shown_groups, "runs"] + [f"{m} ({p})" for p, m in columns]
    rows = []
    for grp in order.itertuples(index=False):
        key = tuple(grp)
        cells = []
        for p, m in columns:
            rec = lookup.get(key + (p, m))
            cells.append(fmt(rec["mean"], rec["std"], rec["n"]) if rec else "–")
        shown = [str(key[groups.index(c)]) for c in shown_groups]
        rows.append([*shown, str(runs.get(key, 0)), *cells])
    return _md_table(header, rows)


def results_pivot(df: pd.DataFrame, protocol: str = "full") -> str:
    """Compact text pivot attack × defense → ``ER@10 / HR@10`` at the final evaluation (mean
    over seeds) for ``protocol``; one block per dataset × model when several."""
    final = final_evaluation(df)
    final = final[(final["protocol"] == protocol) & (final["metric"].isin(["ER@10", "HR@10"]))]
    if final.empty:
        return f"(no finished run with {protocol} test metrics)"
    groups = group_columns(df)
    outer = [g for g in groups
             if g not in ("attack", "defense") and final[g].nunique(dropna=False) > 1]
    mean = final.groupby([*groups, "metric"], dropna=False, sort=False)["value"].mean()
    mean = mean.unstack("metric")
    mean = mean.reset_index()
    mean["cell"] = [f"{er:.3f} / {hr:.3f}" if not (math.isnan(er) or math.isnan(hr)) else "–"
                    for er, hr in zip(mean.get("ER@10", np.nan), mean.get("HR@10", np.nan),
                                      strict=True)]
    attacks = _ordered(df["attack"])
    defenses = _ordered(df["defense"])
    blocks = []
    for key, part in (mean.groupby(outer, dropna=False, sort=False) if outer else [((), mean)]):
        table = part.pivot_table(index="attack", columns="defense", values="cell", aggfunc="first")
        table = table.reindex(index=[a for a in attacks if a in table.index],
                              columns=[d for d in defenses if d in table.columns])
        table = table.fillna("–")
        table.index.name = "attack \\ defense"
        table.columns.name = None
        title = _group_title(outer, key) if outer else ""
        blocks.append((f"[{title}]\n" if title else "") + table.to_string())
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------- plots


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "all"


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), "wb")


def plot_heatmap(final: pd.DataFrame, outer_groups: list[tuple[str, pd.DataFrame]],
                 attacks: list[str], defenses: list[str], path: Path) -> None:
    """ER@10 attack × defense heatmaps (a column per protocol, a row per dataset × model)."""
    import matplotlib.pyplot as plt

    nrow = max(1, len(outer_groups))
    fig, axes = plt.subplots(nrow, len(PROTOCOLS), squeeze=False, layout="constrained",
                             figsize=(1.6 + 1.4 * len(defenses) * len(PROTOCOLS),
                                      1.0 + 0.6 * len(attacks) * nrow))
    for r, (title, part) in enumerate(outer_groups):
        for c, proto in enumerate(PROTOCOLS):
            ax = axes[r][c]
            sel = part[(part["protocol"] == proto) & (part["metric"] == "ER@10")]
            mat = sel.groupby(["attack", "defense"])["value"].mean().unstack("defense")
            mat = mat.reindex(index=attacks, columns=defenses)
            data = mat.to_numpy(dtype=float)
            top = max(1e-9, float(np.nanmax(data)) if np.isfinite(data).any() else 1.0)
            im = ax.imshow(np.nan_to_num(data, nan=0.0), cmap="Reds", vmin=0.0, vmax=top,
                           aspect="auto")
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    v = data[i, j]
                    ax.text(j, i, "–" if math.isnan(v) else f"{v:.3f}", ha="center", va="center",
                            fontsize=8, color="white" if v > 0.6 * top else "black")
            ax.set_xticks(range(len(defenses)), defenses, rotation=30, ha="right", fontsize=8)
            ax.set_yticks(range(len(attacks)), attacks, fontsize=8)
            ax.set_title(f"ER@10 ({proto}){' · ' + title if title else ''}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    _save(fig, path)
    plt.close(fig)


def plot_curves(df: pd.DataFrame, attacks: list[str], defenses: list[str], title: str,
                path: Path) -> None:
    """ER@10 and HR@10 over epochs: a panel per defense, a line per attack (solid: full
    ranking, dashed: sampled), mean over seeds with a ±std band."""
    import matplotlib.pyplot as plt

    ev = df[(df["status"] == "finished") & (df["split"] == "test")
            & (df["metric"].isin(["ER@10", "HR@10"])) & (df["protocol"].isin(PROTOCOLS))].copy()
    if ev.empty:
        return
    ev["x"] = (ev["epoch"].astype("Float64") + 1).where(ev["epoch"].notna(),
                                                       ev["step"].astype("Float64") + 1)
    ev["x"] = ev["x"].astype(float)
    fig, axes = plt.subplots(2, len(defenses), squeeze=False, sharex=True,
                             figsize=(0.6 + 3.0 * len(defenses), 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, defense in enumerate(defenses):
        for r, metric in enumerate(["ER@10", "HR@10"]):
            ax = axes[r][c]
            for i, attack in enumerate(attacks):
                for proto, style in (("full", "-"), ("sampled", "--")):
                    sel = ev[(ev["defense"] == defense) & (ev["attack"] == attack)
                             & (ev["metric"] == metric) & (ev["protocol"] == proto)]
                    if sel.empty:
                        continue
                    g = sel.groupby("x")["value"].agg(["mean", "std"]).sort_index()
                    color = colors[i % len(colors)]
                    ax.plot(g.index, g["mean"], style, color=color, marker="o", markersize=3,
                            label=f"{attack} ({proto})")
                    if g["std"].notna().any():
                        ax.fill_between(g.index, g["mean"] - g["std"].fillna(0),
                                        g["mean"] + g["std"].fillna(0), color=color, alpha=0.15)
            if r == 0:
                ax.set_title(f"defense: {defense}", fontsize=9)
            if c == 0:
                ax.set_ylabel(metric)
            if r == 1:
                ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab, strict=True):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(labels) // 6)))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path)
    plt.close(fig)


def plot_tradeoff(stats: pd.DataFrame, outer_groups: list[tuple[str, pd.DataFrame]],
                  attacks: list[str], defenses: list[str], path: Path) -> None:
    """Utility vs robustness: HR@10 against ER@10, a colour per defense, a marker per attack."""
    import matplotlib.pyplot as plt

    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    nrow = max(1, len(outer_groups))
    fig, axes = plt.subplots(nrow, len(PROTOCOLS), squeeze=False, figsize=(9.5, 3.8 * nrow))
    for r, (title, part) in enumerate(outer_groups):
        for c, proto in enumerate(PROTOCOLS):
            ax = axes[r][c]
            sel = part[part["protocol"] == proto]
            piv = sel.pivot_table(index=["attack", "defense"], columns="metric",
                                  values=["mean", "std"], aggfunc="first")
            for (attack, defense), row in piv.iterrows():
                if ("mean", "ER@10") not in row or ("mean", "HR@10") not in row:
                    continue
                x, y = row[("mean", "ER@10")], row[("mean", "HR@10")]
                if math.isnan(x) or math.isnan(y):
                    continue
                xe = row.get(("std", "ER@10"), np.nan)
                ye = row.get(("std", "HR@10"), np.nan)
                color = (colors[defenses.index(defense) % len(colors)]
                         if defense in defenses else "k")
                marker = markers[attacks.index(attack) % len(markers)] if attack in attacks else "o"
                ax.errorbar(x, y, xerr=None if math.isnan(xe) else xe,
                            yerr=None if math.isnan(ye) else ye, fmt=marker, color=color,
                            markersize=7, capsize=2)
            ax.set_xlabel(f"ER@10 ({proto})  ← more robust")
            ax.set_ylabel(f"HR@10 ({proto})  ↑ more useful")
            ax.set_title(f"utility vs robustness ({proto}){' · ' + title if title else ''}",
                         fontsize=9)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o", linestyle="",
                      label=f"defense: {d}") for i, d in enumerate(defenses)]
    handles += [Line2D([], [], color="gray", marker=markers[i % len(markers)], linestyle="",
                       label=f"attack: {a}") for i, a in enumerate(attacks)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True, eq=False)
class ReportData:
    """The selections of a bench table that the report sections read.

    Parameters
    ----------
    out : Path
        The bench output folder.
    meta : dict
        The expanded grid (``cells.json``).
    df : DataFrame
        The tidy table.
    cells : DataFrame
        One row per cell (its first table row).
    groups : list of str
        Group columns (:func:`group_columns`).
    constant : list of str
        Group columns other than attack/defense with one value over all cells.
    shown : list of str
        Group columns shown in the tables (``groups`` without ``constant``).
    attacks, defenses : list of str
        Attacks and defenses of finished runs, in order of first appearance.
    final : DataFrame
        Rows of each finished run's last test evaluation.
    stats : DataFrame
        :func:`summarize` of ``final`` over the ranking protocols.
    detection : DataFrame
        :func:`summarize` of :func:`detection_per_run`.
    order : DataFrame
        The groups of finished runs, in table row order (empty: no finished run).
    n_runs : dict
        Finished runs per group (key: tuple of the ``groups`` values).
    """

    out: Path
    meta: dict[str, Any]
    df: pd.DataFrame
    cells: pd.DataFrame
    groups: list[str]
    constant: list[str]
    shown: list[str]
    attacks: list[Any]
    defenses: list[Any]
    final: pd.DataFrame
    stats: pd.DataFrame
    detection: pd.DataFrame
    order: pd.DataFrame
    n_runs: dict[tuple, int]

    @property
    def outer(self) -> list[str]:
        """Shown group columns other than attack and defense (they split tables and plots)."""
        return [g for g in self.shown if g not in ("attack", "defense")]

    @property
    def finished_cells(self) -> pd.DataFrame:
        """One row per finished cell."""
        return self.cells[self.cells["status"] == "finished"]


def _row_order(cells: pd.DataFrame, groups: list[str], outer: list[str], attacks: list[Any],
               defenses: list[Any]) -> pd.DataFrame:
    """Groups of finished cells sorted by the outer columns, then attack and defense order."""
    order = cells[cells["status"] == "finished"][groups].drop_duplicates()
    if order.empty:
        return order
    order = order.assign(_a=order["attack"].map({a: i for i, a in enumerate(attacks)}),
                         _d=order["defense"].map({d: i for i, d in enumerate(defenses)}))
    return order.sort_values([*outer, "_a", "_d"], kind="stable")[groups]


def report_data(out: Path, meta: dict[str, Any], df: pd.DataFrame) -> ReportData:
    """Gather the selections of ``df`` that the report needs (see :class:`ReportData`).

    Parameters
    ----------
    out : Path
        A ``fedrec bench`` output folder.
    meta : dict
        Its expanded grid (:func:`fedrec.bench.table.read_cells_file`).
    df : DataFrame
        Its tidy table.

    Returns
    -------
    ReportData
    """
    groups = group_columns(df)
    done = df[df["status"] == "finished"]
    attacks = _ordered(done["attack"])
    defenses = _ordered(done["defense"])
    cells = df.drop_duplicates("cell_id")
    final = final_evaluation(df)
    constant = [g for g in groups
                if g not in ("attack", "defense") and cells[g].nunique(dropna=False) <= 1]
    shown = [g for g in groups if g not in constant]
    outer = [g for g in shown if g not in ("attack", "defense")]
    finished = cells[cells["status"] == "finished"]
    n_runs = {tuple(k): int(v) for k, v in  # groups has >= 4 columns: keys are tuples
              finished.groupby(groups, dropna=False, sort=False).size().items()}
    return ReportData(
        out=out, meta=meta, df=df, cells=cells, groups=groups,
        constant=constant, shown=shown, attacks=attacks, defenses=defenses, final=final,
        stats=summarize(final[final["protocol"].isin(PROTOCOLS)], groups),
        detection=summarize(detection_per_run(df), groups),
        order=_row_order(cells, groups, outer, attacks, defenses), n_runs=n_runs,
    )


def header_section(data: ReportData) -> list[str]:
    """Title, grid description and the summary bullets (cells, seeds, constants, protocols)."""
    out, meta, cells = data.out, data.meta, data.cells
    runs = data.final.drop_duplicates("cell_id")
    seeds = sorted(int(s) for s in runs["seed"].dropna().unique()) if not runs.empty else []
    status_counts = cells["status"].value_counts().to_dict()
    lines = [f"# Benchmark report: {meta.get('grid', out.name)}", ""]
    if meta.get("description"):
        lines += [str(meta["description"]).strip(), ""]
    lines += [
        f"- grid: `{meta.get('source', '?')}`; folder: `{out}`",
        f"- cells: {len(cells)} "
        f"({', '.join(f'{v} {k}' for k, v in sorted(status_counts.items()))})",
        f"- seeds: {', '.join(map(str, seeds)) or '–'}; numbers are mean ± std over seeds at each "
        "run's final test evaluation (a single number: one run)",
        "- constant: " + (", ".join(f"{g} = {cells[g].iloc[0]}" for g in data.constant) or "–"),
        "- protocols: *full* = ranking over all items; *sampled* = the held-out item among "
        "sampled negative candidates (see each cell's `config.yaml`, `eval.n_negatives`)",
        "- ER@K: share of benign users without a target item in their history whose top-K list "
        "contains a target item (higher = stronger attack); HR@10/NDCG@10: utility",
        f"- generated {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; tidy table: "
        "`results.parquet` / `results.csv`",
        "",
    ]
    return lines


def _table(data: ReportData, stats: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    return _metric_table(stats, data.groups, data.shown, columns, data.order, data.n_runs)


def results_section(data: ReportData) -> list[str]:
    """Attack-success (ER@K) and utility tables, or a note that no run has finished."""
    if data.order.empty:
        return ["**No finished run yet.**", ""]
    er_cols = [(p, m) for p in PROTOCOLS for m in ER_METRICS]
    ut_cols = [(p, m) for p in PROTOCOLS for m in UTILITY_METRICS]
    return ["## Attack success (ER@K, final evaluation)", "", _table(data, data.stats, er_cols),
            "", "## Utility (final evaluation)", "", _table(data, data.stats, ut_cols), ""]


def detection_section(data: ReportData) -> list[str]:
    """Detection precision/recall table of client-filtering defenses (empty if none)."""
    det = data.detection
    if data.order.empty or det.empty or not det["mean"].notna().any():
        return []
    columns = [("defense", "detect_precision"), ("defense", "detect_recall")]
    return ["## Detection (client-filtering defenses)", "",
            "Per run, the mean over rounds of precision (flagged clients that were "
            "malicious) and recall (malicious clients that were flagged); `–`: never "
            "defined (no malicious client, or the defense flags none).", "",
            _table(data, det.assign(protocol="defense"), columns), ""]


def _outer_parts(frame: pd.DataFrame, outer: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """``frame`` split by the ``outer`` columns, each part with its title (one part if none)."""
    if not outer:
        return [("", frame)]
    return [(_group_title(outer, key), part)
            for key, part in frame.groupby(outer, dropna=False, sort=False)]


def draw_plots(data: ReportData) -> list[tuple[str, str]]:
    """Draw the PNGs into the bench folder; return ``(caption, file name)`` of each image."""
    out, outer = data.out, data.outer
    attacks, defenses = data.attacks, data.defenses
    images: list[tuple[str, str]] = []
    fin_eval = data.final[data.final["protocol"].isin(PROTOCOLS)]
    plot_heatmap(fin_eval, _outer_parts(fin_eval, outer), attacks, defenses,
                 out / "er10_heatmap.png")
    images.append(("ER@10 at the final evaluation, attack × defense", "er10_heatmap.png"))
    for title, part in _outer_parts(data.df[data.df["status"] == "finished"], outer):
        name = "curves.png" if not title else f"curves_{_slug(title)}.png"
        plot_curves(part, attacks, defenses, title, out / name)
        if (out / name).is_file():
            images.append(("ER@10 and HR@10 over epochs (solid: full ranking, dashed: sampled)"
                           + (f" — {title}" if title else ""), name))
    plot_tradeoff(data.stats, _outer_parts(data.stats, outer), attacks, defenses,
                  out / "utility_vs_robustness.png")
    images.append(("Utility vs robustness per defense (up-left is better)",
                   "utility_vs_robustness.png"))
    return images


def plots_section(images: list[tuple[str, str]]) -> list[str]:
    """The images with their captions (empty if none)."""
    if not images:
        return []
    lines = ["## Plots", ""]
    for caption, name in images:
        lines += [f"**{caption}**", "", f"![{caption}]({name})", ""]
    return lines


def failed_cells_section(cells: pd.DataFrame) -> list[str]:
    """Table of the cells that did not finish, with their errors (empty if none)."""
    bad = cells[cells["status"] != "finished"]
    if bad.empty:
        return []
    rows = [[f"`{r.cell_id}`", r.status,
             (r.error if isinstance(r.error, str) else "").replace("|", "\\|")]
            for r in bad.itertuples()]
    return ["## Cells not finished", "", _md_table(["cell", "status", "error"], rows), "",
            "Re-run the same `fedrec bench` command to retry them (finished cells are kept).", ""]


def cost_section(data: ReportData) -> list[str]:
    """Wall time and peak memory of the finished runs (empty if no run has a final result)."""
    if data.final.empty:
        return []
    t = data.finished_cells
    return ["## Cost", "",
            f"Wall time per run: median {t['wall_time_s'].median():.1f} s, max "
            f"{t['wall_time_s'].max():.1f} s, total {t['wall_time_s'].sum():.1f} s; peak "
            f"memory per run: max {t['peak_memory_mb'].max():.0f} MB.", ""]


def render_report(out: str | Path, df: pd.DataFrame | None = None, plots: bool = True) -> Path:
    """Write ``<out>/report.md`` (and the PNGs next to it); return its path.

    Parameters
    ----------
    out : str or Path
        A ``fedrec bench`` output folder.
    df : DataFrame, optional
        The tidy table (default: rebuilt from the cell directories and rewritten).
    plots : bool
        Also draw the PNGs.

    Returns
    -------
    Path
        ``<out>/report.md``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    out = Path(out)
    meta = read_cells_file(out)
    if df is None:
        df = build_table(out)
        write_table(df, out)
    data = report_data(out, meta, df)
    images = draw_plots(data) if plots and not data.order.empty else []
    lines = [*header_section(data), *results_section(data), *detection_section(data),
             *plots_section(images), *failed_cells_section(data.cells), *cost_section(data)]
    path = out / REPORT
    atomic_write_text(path, "\n".join(lines))
    return path
