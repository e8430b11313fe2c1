"""Benchmark grids: expand a grid file into cells, run them as Ray tasks with resume, collect
one tidy table, and render a Markdown report with plots.

* :mod:`fedrec.bench.grid` — grid file format, expansion (axes product, include/exclude,
  sub-mapping axes), stable cell ids;
* :mod:`fedrec.bench.execute` — cells as Ray tasks (local instance or existing cluster), resume,
  failure isolation, progress;
* :mod:`fedrec.bench.table` — the tidy table (one row per run × metric × evaluation step);
* :mod:`fedrec.bench.report` — ``report.md`` and PNG plots.
"""

from fedrec.bench.grid import Cell, Grid, load_grid, parse_grid, resolve_grid_path

__all__ = ["Cell", "Grid", "load_grid", "parse_grid", "resolve_grid_path"]
