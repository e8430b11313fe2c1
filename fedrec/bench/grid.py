"""Benchmark grids: a base experiment config, axes of values, include/exclude rules → cells.

A grid file (YAML)::

    name: quickstart                  # optional; default: the file's stem
    base_config: ../federated/x.yaml  # optional experiment config, relative to the grid file
    base:                             # experiment config (or overrides of base_config), deep-merged
      mode: federated
      federation: {epochs: 4}
    axes:                             # dotted config key -> list of values
      attack.name: [none, random, dvfsr]
      defense:                        # a whole sub-mapping per value (replaces the section)
        - {name: mean}
        - {name: trimmed_mean, params: {beta: 0.1}}
      seed: [0, 1, 2]
    exclude:                          # drop product cells matching every key of a rule
      - {attack.name: none, seed: 2}
    include:                          # GitHub-Actions-matrix semantics (see expand)
      - {attack.name: dvfsr, attack.scale: 5.0}       # adds a key to matching cells
      - {attack.name: dvfsr, defense: {name: krum}}   # matches no cell -> a new cell

Expansion follows GitHub Actions' ``strategy.matrix``: the Cartesian product of the axes, minus
the cells matched by an ``exclude`` rule (a rule matches a cell when *all* its keys have the
cell's values; a key may also point inside a sub-mapping axis, e.g. ``defense.name``), then each
``include`` rule is merged into every remaining product cell whose axis values it does not
contradict (adding its other keys), or, when it fits none, becomes a cell of its own.

A cell's id is readable (its axis values) and ends with a short hash of its raw config, so it is
filesystem-safe, stable across re-runs and re-orderings of the file, and changes whenever the
experiment it stands for changes (a finished cell is never reused for a different config).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from fedrec.config import (
    ExperimentConfig,
    apply_overrides,
    check_component_name,
    check_finite,
    parse_override,
    read_yaml,
    set_key_path,
    validate_config,
)
from fedrec.errors import ConfigError
from fedrec.registry import suggestion

#: Top-level keys of a grid file.
GRID_KEYS = ("name", "description", "base_config", "base", "axes", "include", "exclude")
#: Where the bundled grids live (``fedrec bench quickstart``).
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Config keys that never enter a cell's hash (they name the run, not the experiment).
_UNHASHED = ("name", "output_dir")


# ---------------------------------------------------------------------------- config keys


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_free_mapping(annotation: Any) -> bool:
    origin = getattr(annotation, "__origin__", None)
    return origin is dict or annotation is dict


def config_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the experiment config schema (sections and leaves)."""
    out: list[str] = []
    for name, fld in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        if _is_section(fld.annotation):
            out.extend(config_keys(fld.annotation, key + "."))
    return out


def check_key(key: Any, where: str) -> str:
    """Check that ``key`` is a dotted key of the experiment config; return it.

    Keys below a free-form mapping (``attack.params.*``, ``defense.params.*``,
    ``model.params.*``) are accepted as is.

    Raises
    ------
    ConfigError
        One line naming the key, with a "did you mean" hint.
    """
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{where}: malformed key {key!r} (expected a dotted config key such as "
                          "'attack.name')")
    cls: Any = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fld = cls.model_fields.get(part) if cls is not None else None
        if fld is None:
            valid = config_keys()
            raise ConfigError(f"{where}: unknown config key {key!r}{suggestion(key, valid)}")
        if _is_free_mapping(fld.annotation):
            return key
        if i < len(parts) - 1:
            if not _is_section(fld.annotation):
                raise ConfigError(f"{where}: unknown config key {key!r} "
                                  f"({'.'.join(parts[: i + 1])!r} is not a section)")
            cls = fld.annotation
    return key


#: Keys whose values must be registered names (see :func:`fedrec.config.check_component_name`).
_NAME_KEYS = {"attack.name": "attack", "defense.name": "defense", "model.name": "model"}


def _field_at(key: str) -> Any:
    """The schema field of dotted ``key`` (already checked by :func:`check_key`), or None when
    ``key`` lies inside a free-form mapping."""
    cls: Any = ExperimentConfig
    parts = key.split(".")
    fld = None
    for i, part in enumerate(parts):
        fld = cls.model_fields[part]
        if i < len(parts) - 1:
            if not _is_section(fld.annotation):  # below a free-form mapping
                return None
            cls = fld.annotation
    return fld


@functools.cache
def _adapter(key: str) -> TypeAdapter:
    """A validator of one leaf field's values: its type and range constraints."""
    fld = _field_at(key)
    return TypeAdapter(Annotated[(fld.annotation, *fld.metadata)] if fld.metadata
                       else fld.annotation)


def check_value(key: str, value: Any) -> None:
    """Check one value of dotted config key ``key`` on its own, as a grid assigns it.

    Checked: finiteness of every number, the field's type and range, registered names
    (``attack.name``, ``defense.name``, ``model.name``), and, for a whole section given as a
    mapping (``defense: {name: krum}``), each of its keys the same way. Rules that relate
    several keys (e.g. ``federation.epochs``/``rounds``) are left to the cell's validation,
    since other axes or ``include`` rules may complete the cell.

    Raises
    ------
    ConfigError
        ``"<dotted key>: <what is wrong>"``.
    """
    check_finite(value, key, "")
    fld = _field_at(check_key(key, "grid"))
    if fld is None or _is_free_mapping(fld.annotation):
        return
    if _is_section(fld.annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {key} keys (got {value!r})")
        for sub, v in value.items():
            check_value(check_key(f"{key}.{sub}", "grid"), v)
        return
    try:
        _adapter(key).validate_python(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        raise ConfigError(f"{where}: {err['msg']} (got {err['input']!r})") from None
    if key in _NAME_KEYS:
        try:
            check_component_name(_NAME_KEYS[key], value)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str = "grid") -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"`` (creating sections)."""
    set_key_path(raw, key.split("."), copy.deepcopy(value), f"{where}: cannot set {key!r}")


def get_dotted(raw: Any, key: str) -> tuple[bool, Any]:
    """``(found, value)`` of dotted ``key`` in nested mappings."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def expand_dotted(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Nested mapping from one that may use dotted keys (``{federation.epochs: 2}``)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
            raise ConfigError(f"{where}: malformed key {k!r}")
        nested = expand_dotted(v, where) if isinstance(v, dict) else v
        head, *rest = k.split(".")
        for part in reversed(rest):
            nested = {part: nested}
        if isinstance(nested, dict) and isinstance(out.get(head), dict):
            out[head] = deep_merge(out[head], nested)
        else:
            out[head] = nested
    return out


# ---------------------------------------------------------------------------- cell ids


def canonical(value: Any) -> str:
    """Canonical JSON of a value (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(raw: dict[str, Any], n: int = 8) -> str:
    """Short hash of a raw experiment config (``name``/``output_dir`` excluded)."""
    payload = {k: v for k, v in raw.items() if k not in _UNHASHED}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:n]


def value_label(value: Any) -> str:
    """Readable scalar label of an axis value (mappings as ``name(k=v,...)``)."""
    if isinstance(value, dict):
        rest = {k: v for k, v in value.items() if k != "name"}
        flat = _flatten(rest)
        leaves = [k.split(".")[-1] for k in flat]
        if len(set(leaves)) == len(leaves):  # short keys when unambiguous
            flat = dict(zip(leaves, flat.values(), strict=True))
        inner = ",".join(f"{k}={value_label(v)}" for k, v in flat.items())
        if "name" in value:
            return f"{value['name']}({inner})" if inner else str(value["name"])
        return f"({inner})"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_label(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return json.dumps(value)
    return str(value)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return re.sub(r"_+", "_", s) or "x"


def short_names(keys: list[str]) -> dict[str, str]:
    """Short readable names of dotted keys (``attack.name`` → ``attack``, ``attack.fraction`` →
    ``fraction``); keys whose short names collide keep their full dotted form."""
    def short(k: str) -> str:
        parts = k.split(".")
        if len(parts) > 1 and parts[-1] == "name":
            return parts[-2]
        return parts[-1]

    names = {k: short(k) for k in keys}
    counts: dict[str, int] = {}
    for s in names.values():
        counts[s] = counts.get(s, 0) + 1
    return {k: (s if counts[s] == 1 else k) for k, s in names.items()}


def make_cell_id(assignment: dict[str, Any], shorts: dict[str, str], digest: str,
                 max_len: int = 96) -> str:
    """``attack-dvfsr__defense-mean__seed-0__1a2b3c4d``: readable, filesystem-safe, stable."""
    parts = []
    for k, v in assignment.items():
        if isinstance(v, dict):
            flat = _flatten({kk: vv for kk, vv in v.items() if kk != "name"})
            bits = [str(v["name"])] if "name" in v else []
            bits += [f"{kk.split('.')[-1]}{value_label(vv)}" for kk, vv in flat.items()]
            label = "-".join(bits)
        else:
            label = value_label(v)
        parts.append(_slug(f"{shorts.get(k, k)}-{label}"))
    readable = "__".join(parts)[:max_len].rstrip("_.-") or "base"
    return f"{readable}__{digest}"


# ---------------------------------------------------------------------------- grid


@dataclass
class Cell:
    """One run of a grid.

    Attributes
    ----------
    cell_id : str
        Readable, filesystem-safe, stable id (directory name under ``<out>/cells``).
    assignment : dict
        The cell's values: axis keys first (grid order), then keys added by ``include``.
    raw : dict
        The raw experiment config (base + assignment, ``name`` = cell id).
    config : ExperimentConfig
        The validated config.
    """

    cell_id: str
    assignment: dict[str, Any]
    raw: dict[str, Any]
    config: ExperimentConfig

    def to_json(self) -> dict[str, Any]:
        """JSON-able description (stored in ``<out>/cells.json``)."""
        return {"cell_id": self.cell_id, "assignment": self.assignment, "raw": self.raw}


@dataclass
class Grid:
    """A parsed grid file (see module docstring)."""

    name: str
    source: str
    base: dict[str, Any]
    axes: dict[str, list[Any]] = field(default_factory=dict)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""

    # --------------------------------------------------------------- matching
    def _axis_of(self, key: str) -> str | None:
        """The axis ``key`` is (or lies inside), else None."""
        if key in self.axes:
            return key
        for axis in self.axes:
            if key.startswith(axis + "."):
                return axis
        return None

    def _lookup(self, assignment: dict[str, Any], key: str) -> tuple[bool, Any]:
        if key in assignment:
            return True, assignment[key]
        axis = self._axis_of(key)
        if axis is not None and axis in assignment:
            return get_dotted(assignment[axis], key[len(axis) + 1:])
        return False, None

    def _matches(self, assignment: dict[str, Any], rule: dict[str, Any]) -> bool:
        for k, v in rule.items():
            found, have = self._lookup(assignment, k)
            if not found or canonical(have) != canonical(v):
                return False
        return True

    # --------------------------------------------------------------- expansion
    def assignments(self) -> list[dict[str, Any]]:
        """The cells' assignments (product − exclude, then include), in a stable order."""
        if self.axes:
            keys = list(self.axes)
            product = [dict(zip(keys, combo, strict=True))
                       for combo in itertools.product(*(self.axes[k] for k in keys))]
        else:
            product = []
        kept = [a for a in product if not any(self._matches(a, r) for r in self.exclude)]
        extra: list[dict[str, Any]] = [{} for _ in kept]
        added: list[dict[str, Any]] = []
        for rule in self.include:
            original = {k: v for k, v in rule.items() if self._axis_of(k) is not None}
            others = {k: v for k, v in rule.items() if self._axis_of(k) is None}
            matched = False
            for i, a in enumerate(kept):
                if self._matches(a, original):
                    matched = True
                    extra[i].update(copy.deepcopy(others))
            if not matched:
                added.append(copy.deepcopy(rule))
        out = [{**a, **e} for a, e in zip(kept, extra, strict=True)] + added
        if not out and not self.axes:
            out = [{}]
        return out

    def cells(self) -> list[Cell]:
        """Expand and validate every cell (duplicates, i.e. identical configs, kept once).

        Raises
        ------
        ConfigError
            A cell's config is invalid (the message names the cell and the key), or a cell
            asks for the Flower engine (cells already run as Ray tasks; see docs).
        """
        assignments = self.assignments()
        keys: list[str] = []
        for a in assignments:
            keys.extend(k for k in a if k not in keys)
        shorts = short_names(keys)
        cells: list[Cell] = []
        seen: set[str] = set()
        for a in assignments:
            raw = copy.deepcopy(self.base)
            for k, v in a.items():
                set_dotted(raw, k, v, f"{self.source}: cell {a}")
            digest = config_hash(raw)
            cell_id = make_cell_id(a, shorts, digest)
            if digest in seen:
                continue
            seen.add(digest)
            raw["name"] = cell_id
            cfg = validate_config(raw, f"{self.source}: cell {cell_id}")
            if cfg.mode == "federated" and cfg.federation.engine == "flower":
                raise ConfigError(
                    f"{self.source}: cell {cell_id}: federation.engine='flower' cannot run inside "
                    "`fedrec bench` (cells already are Ray tasks and Ray cannot nest); use "
                    "federation.engine=local (same numbers) or run it alone with `fedrec run`")
            cells.append(Cell(cell_id, a, raw, cfg))
        return cells


def resolve_grid_path(grid: str | Path) -> Path:
    """A grid file path, or the bundled grid of that name (``quickstart`` →
    ``fedrec/configs/quickstart.yaml``).

    Raises
    ------
    ConfigError
        Neither a file nor a bundled grid.
    """
    path = Path(grid)
    if path.is_file():
        return path
    name = str(grid)
    if "/" not in name and "\\" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        bundled = BUNDLED_DIR / f"{stem}.yaml"
        if bundled.is_file():
            return bundled
    available = sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))
    raise ConfigError(f"{grid}: grid file not found "
                      f"(bundled grids: {', '.join(available) or 'none'})")


def _rules(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(r, dict) and r for r in value):
        raise ConfigError(f"{where}: expected a list of non-empty mappings (partial assignments "
                          "such as {attack.name: none, seed: 1})")
    return [dict(r) for r in value]


def parse_grid(raw: dict[str, Any], source: str = "grid", base_dir: Path | None = None,
               overrides: list[str] | None = None, name: str = "grid") -> Grid:
    """Build a :class:`Grid` from a parsed grid mapping.

    Parameters
    ----------
    raw : dict
        The grid file's content.
    source : str
        Name used in error messages (the file path).
    base_dir : Path, optional
        Folder that a relative ``base_config`` is resolved against.
    overrides : list of str
        ``a.b=value`` overrides applied to the base config (``fedrec bench --set``).
    name : str
        Default grid name.

    Raises
    ------
    ConfigError
        Unknown top-level key, unknown axis/rule key (named, with a suggestion), an axis
        whose values are not a non-empty list, an exclude key that is not an axis, an invalid
        base config.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with base/axes/include/exclude")
    for key in raw:
        if key not in GRID_KEYS:
            hint = suggestion(key, GRID_KEYS) or f" (valid keys: {', '.join(GRID_KEYS)})"
            raise ConfigError(f"{source}: unknown grid key {key!r}{hint}")
    base: dict[str, Any] = {}
    if raw.get("base_config"):
        path = Path(str(raw["base_config"])).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        base = read_yaml(path)
    over = raw.get("base") or {}
    if not isinstance(over, dict):
        raise ConfigError(f"{source}: base: expected an experiment config mapping")
    base = deep_merge(base, expand_dotted(over, f"{source}: base"))
    apply_overrides(base, list(overrides or []))
    base.pop("name", None)
    validate_config({**base}, f"{source}: base")

    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise ConfigError(f"{source}: axes: expected a mapping of config key -> list of values")
    axes: dict[str, list[Any]] = {}
    for key, values in axes_raw.items():
        check_key(key, f"{source}: axes")
        if key in ("name", "output_dir"):
            raise ConfigError(f"{source}: axes: {key!r} cannot be an axis (it names the run)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: axes.{key}: expected a non-empty list of values "
                              f"(got {values!r})")
        for value in values:
            try:
                check_value(key, value)
            except ConfigError as exc:
                # "<key>: ..." or "<key>[i]: ..." as is; a key inside a section value after it
                msg = str(exc)
                if not msg.startswith((f"{key}: ", f"{key}[")):
                    msg = f"{key}: {msg}"
                raise ConfigError(f"{source}: axes.{msg}") from None
        axes[key] = values
    for i, a in enumerate(axes):
        for b in list(axes)[i + 1:]:
            if a.startswith(b + ".") or b.startswith(a + "."):
                raise ConfigError(f"{source}: axes: {a!r} and {b!r} overlap "
                                  "(one is inside the other)")

    grid = Grid(name=str(raw.get("name") or name), source=source, base=base, axes=axes,
                description=str(raw.get("description") or ""))
    grid.exclude = _rules(raw.get("exclude"), f"{source}: exclude")
    for rule in grid.exclude:
        for key in rule:
            check_key(key, f"{source}: exclude")
            if grid._axis_of(key) is None:
                raise ConfigError(f"{source}: exclude: key {key!r} is not an axis "
                                  f"(axes: {', '.join(axes) or 'none'})")
    grid.include = _rules(raw.get("include"), f"{source}: include")
    for rule in grid.include:
        for key in rule:
            check_key(key, f"{source}: include")
            if key in ("name", "output_dir"):
                raise ConfigError(f"{source}: include: {key!r} cannot be set per cell")
    for what, rules in (("exclude", grid.exclude), ("include", grid.include)):
        for i, rule in enumerate(rules):
            try:
                for key, value in rule.items():
                    check_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {what}[{i}]: {exc}") from None
    return grid


def select_cells(cells: list[Cell], only: list[str]) -> list[Cell]:
    """The cells whose config has every ``KEY=VALUE`` of ``only`` (a slice of a grid).

    ``KEY`` is a dotted config key (``seed``, ``defense.name``, ``attack.knowledge.budget``);
    ``VALUE`` is parsed as YAML, as ``--set`` values are. The cells keep their grid ids, so a
    slice run into the grid's folder is part of the full grid and a later full run skips it.

    Raises
    ------
    ConfigError
        A malformed ``KEY=VALUE`` or a key that is not a config key.
    """
    wanted: list[tuple[str, Any]] = []
    for text in only:
        path, value = parse_override(text, "--only", "seed=0 or defense.name=krum")
        wanted.append((check_key(".".join(path), f"--only {text!r}"), value))
    return [c for c in cells
            if all(canonical(config_value(c, k)) == canonical(v) for k, v in wanted)]


def config_value(cell: Cell, key: str) -> Any:
    """The value at dotted ``key`` of a cell's validated config (defaults filled in)."""
    node: Any = cell.config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node.model_dump() if isinstance(node, BaseModel) else node


def load_grid(grid: str | Path, overrides: list[str] | None = None) -> Grid:
    """Read a grid file (or a bundled grid by name) into a :class:`Grid`.

    Raises
    ------
    ConfigError
        See :func:`parse_grid`; also a missing file or a YAML syntax error (with the line).
    """
    path = resolve_grid_path(grid)
    raw = read_yaml(path)
    return parse_grid(raw, str(path), path.parent, overrides, name=path.stem)
