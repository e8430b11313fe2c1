"""Grid files: axes product, include/exclude (GitHub-Actions matrix semantics), sub-mapping axes,
stable filesystem-safe cell ids, one-line ConfigErrors naming the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fedrec.bench.grid import (
    BUNDLED_DIR,
    check_key,
    load_grid,
    parse_grid,
    resolve_grid_path,
    select_cells,
)
from fedrec.errors import ConfigError

BASE = {"mode": "federated", "federation": {"epochs": 1}}


def grid(axes=None, include=None, exclude=None, base=None, **extra):
    raw = {"base": base if base is not None else dict(BASE), **extra}
    if axes is not None:
        raw["axes"] = axes
    if include is not None:
        raw["include"] = include
    if exclude is not None:
        raw["exclude"] = exclude
    return parse_grid(raw, "g.yaml")


def assignments(g):
    return [c.assignment for c in g.cells()]


def test_axes_product_in_order_and_values_reach_the_config():
    g = grid({"attack.name": ["none", "random"], "defense.name": ["mean", "median", "krum"],
              "seed": [0, 1]})
    cells = g.cells()
    assert len(cells) == 2 * 3 * 2
    assert cells[0].assignment == {"attack.name": "none", "defense.name": "mean", "seed": 0}
    assert cells[1].assignment == {"attack.name": "none", "defense.name": "mean", "seed": 1}
    assert cells[-1].assignment == {"attack.name": "random", "defense.name": "krum", "seed": 1}
    for c in cells:
        assert c.config.attack.name == c.assignment["attack.name"]
        assert c.config.defense.name == c.assignment["defense.name"]
        assert c.config.seed == c.assignment["seed"]
        assert c.config.federation.epochs == 1  # base kept
        assert c.config.name == c.cell_id
    assert len({c.cell_id for c in cells}) == len(cells)


def test_exclude_drops_cells_matching_all_keys_of_a_rule():
    g = grid({"attack.name": ["none", "random"], "defense.name": ["mean", "median"],
              "seed": [0, 1]},
             exclude=[{"attack.name": "none", "seed": 1}, {"defense.name": "median", "seed": 0}])
    got = assignments(g)
    assert {"attack.name": "none", "defense.name": "mean", "seed": 1} not in got
    assert {"attack.name": "random", "defense.name": "median", "seed": 0} not in got
    # partial matches survive: each of these matches some keys of a rule, never all
    assert {"attack.name": "none", "defense.name": "mean", "seed": 0} in got
    assert {"attack.name": "random", "defense.name": "mean", "seed": 1} in got
    assert {"attack.name": "random", "defense.name": "median", "seed": 1} in got
    assert len(got) == 8 - 2 - 2


def test_include_extends_matching_cells_and_adds_unmatched_ones():
    g = grid({"attack.name": ["none", "dvfsr"], "defense.name": ["mean", "median"]},
             include=[{"attack.name": "dvfsr", "attack.scale": 5.0},        # extends 2 cells
                      {"attack.name": "dvfsr", "defense.name": "krum"},      # new cell
                      {"attack.name": "none", "defense.name": "mean"}])      # exact: no-op
    got = assignments(g)
    assert len(got) == 5
    assert {"attack.name": "dvfsr", "defense.name": "mean", "attack.scale": 5.0} in got
    assert {"attack.name": "dvfsr", "defense.name": "median", "attack.scale": 5.0} in got
    assert {"attack.name": "none", "defense.name": "mean"} in got
    assert got[-1] == {"attack.name": "dvfsr", "defense.name": "krum"}
    scales = {(c.config.attack.name, c.config.defense.name): c.config.attack.scale
              for c in g.cells()}
    assert scales[("dvfsr", "median")] == 5.0 and scales[("none", "median")] == 1.0


def test_include_only_grid_and_no_axes_grid():
    g = grid(include=[{"defense.name": "mean"}, {"defense.name": "median", "seed": 3}])
    got = [(c.config.defense.name, c.config.seed) for c in g.cells()]
    assert got == [("mean", 0), ("median", 3)]
    single = grid()
    assert len(single.cells()) == 1 and single.cells()[0].assignment == {}


def test_sub_mapping_axis_replaces_the_section_and_rules_can_look_inside():
    axes = {"attack.name": ["none", "dvfsr"],
            "defense": [{"name": "mean"}, {"name": "trimmed_mean", "params": {"beta": 0.1}}]}
    base = {**BASE, "defense": {"name": "median"}}
    g = grid(axes, base=base, exclude=[{"attack.name": "none", "defense.name": "trimmed_mean"}])
    cells = g.cells()
    assert len(cells) == 3
    by = {(c.config.attack.name, c.config.defense.name): c for c in cells}
    assert by[("dvfsr", "trimmed_mean")].config.defense.params == {"beta": 0.1}
    assert by[("none", "mean")].config.defense.params == {}
    assert ("none", "trimmed_mean") not in by
    cid = by[("dvfsr", "trimmed_mean")].cell_id
    assert "trimmed_mean" in cid and "beta0.1" in cid


def test_only_selects_a_slice_with_the_grid_ids():
    axes = {"attack.name": ["none", "dvfsr"],
            "defense": [{"name": "mean"}, {"name": "trimmed_mean", "params": {"beta": 0.1}}],
            "seed": [0, 1]}
    cells = grid(axes).cells()
    ids = {c.cell_id for c in cells}
    part = select_cells(cells, ["seed=0", "defense.name=trimmed_mean"])
    assert [(c.config.attack.name, c.config.seed) for c in part] == [("dvfsr", 0), ("none", 0)][::-1]
    assert {c.cell_id for c in part} <= ids
    # values are compared as parsed YAML, sections as a whole, defaults included
    assert len(select_cells(cells, ["defense.params={beta: 0.1}"])) == 4
    assert len(select_cells(cells, ["defense.params={}"])) == 4
    assert len(select_cells(cells, ["federation.epochs=1"])) == 8
    assert select_cells(cells, ["seed=7"]) == []
    assert select_cells(cells, []) == cells


@pytest.mark.parametrize("only, named", [("seed", "expected KEY=VALUE"),
                                         ("sed=0", "did you mean 'seed'")])
def test_only_bad_selector_is_one_line_naming_it(only, named):
    cells = grid({"seed": [0, 1]}).cells()
    with pytest.raises(ConfigError, match=named):
        select_cells(cells, [only])


def test_cell_ids_are_stable_safe_and_track_the_config(tmp_path: Path):
    axes = {"attack.name": ["none", "dvfsr"], "attack.fraction": [0.01, 0.05],
            "defense": [{"name": "trimmed_mean", "params": {"beta": 0.1}},
                        {"name": "mean", "params": {"tag": "a b/c:*"}}]}
    ids = [c.cell_id for c in grid(axes).cells()]
    assert ids == [c.cell_id for c in grid(axes).cells()]
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", cid), cid
        assert not cid.startswith(".") and len(cid) <= 120
        assert re.search(r"__[0-9a-f]{8}$", cid)
    assert ids[0].startswith("attack-none__fraction-0.01__defense-trimmed_mean-beta0.1__")
    # key order in the file does not matter; adding a value does not move the others
    reordered = {"defense": axes["defense"], "attack.fraction": [0.01, 0.05],
                 "attack.name": ["none", "dvfsr"]}
    assert {c.cell_id.rsplit("__", 1)[1] for c in grid(reordered).cells()} == \
        {i.rsplit("__", 1)[1] for i in ids}
    more = dict(axes, **{"attack.fraction": [0.01, 0.05, 0.1]})
    assert set(ids) <= {c.cell_id for c in grid(more).cells()}
    # a different base (the experiment changed) gives different ids: no stale reuse
    other = grid(axes, base={**BASE, "federation": {"epochs": 2}})
    assert not set(ids) & {c.cell_id for c in other.cells()}


@pytest.mark.parametrize("axes, named", [
    ({"defense.nmae": ["mean"]}, "'defense.nmae' (did you mean 'defense.name'?)"),
    ({"atack.name": ["none"]}, "'atack.name'"),
    ({"federation.epochs.x": [1]}, "'federation.epochs.x'"),
    ({"seed": 3}, "axes.seed: expected a non-empty list"),
    ({"seed": []}, "axes.seed: expected a non-empty list"),
])
def test_bad_axis_is_a_one_line_config_error_naming_it(axes, named):
    with pytest.raises(ConfigError) as info:
        grid(axes)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("g.yaml: axes")
    assert named in msg


def write_grid(tmp_path: Path, raw: dict | str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("axes, named", [
    ({"attack.name": ["none", "dvfrs"]},
     "axes.attack.name: unknown attack 'dvfrs' (did you mean 'dvfsr'?); valid names: "),
    ({"defense": [{"name": "mean"}, {"name": "meen"}]},
     "axes.defense: defense.name: unknown defense 'meen' (did you mean 'mean'?)"),
    ({"defense.name": ["median", "krumm"]}, "axes.defense.name: unknown defense 'krumm'"),
    ({"model.name": ["sasrek"]}, "axes.model.name: unknown model 'sasrek'"),
    ({"seed": [0, -1]}, "axes.seed: Input should be greater than or equal to 0 (got -1)"),
    ({"federation.server_betas": [[0.9, 1.0]]}, "axes.federation.server_betas[1]: "),
    ({"attack.params.x": [float("nan")]}, "axes.attack.params.x: nan is not a finite number"),
    ({"defense": [{"name": "mean", "nme": 1}]}, "unknown config key 'defense.nme'"),
    ({"federation.epochs": ["two"]}, "axes.federation.epochs: Input should be a valid integer"),
])
def test_bad_axis_value_fails_at_load_grid_naming_axis_and_value(tmp_path, axes, named):
    path = write_grid(tmp_path, {"base": BASE, "axes": axes})
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: axes.")
    assert named in msg, msg


def test_bad_include_or_exclude_value_fails_at_parse():
    with pytest.raises(ConfigError, match=r"g.yaml: include\[1\]: attack.name: unknown attack "
                                          r"'dvfrs' \(did you mean 'dvfsr'\?\)"):
        grid({"seed": [0]}, include=[{"seed": 0, "attack.name": "none"},
                                     {"seed": 1, "attack.name": "dvfrs"}])
    with pytest.raises(ConfigError, match=r"g.yaml: exclude\[0\]: defense.name: unknown defense"):
        grid({"defense.name": ["mean"]}, exclude=[{"defense.name": "meen"}])


def test_unknown_name_in_base_fails_at_load_grid(tmp_path):
    path = write_grid(tmp_path, {"base": {**BASE, "attack": {"name": "dvfrs"}}})
    with pytest.raises(ConfigError, match=r": base: attack.name: unknown attack 'dvfrs'"):
        load_grid(path)


def test_duplicate_key_in_grid_file_names_key_and_line(tmp_path):
    path = write_grid(tmp_path, "base:\n  mode: federated\naxes:\n  seed: [0, 1]\n"
                                "  attack.name: [none]\n  seed: [2]\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(info.value).startswith(f"{path}:6: duplicate key 'seed' (first given on line 4)")


def test_free_form_params_keys_are_accepted():
    assert check_key("attack.params.repeats", "x") == "attack.params.repeats"
    g = grid({"defense.params.beta": [0.1, 0.2]},
             base={**BASE, "defense": {"name": "trimmed_mean"}})
    assert [c.config.defense.params["beta"] for c in g.cells()] == [0.1, 0.2]


def test_other_one_line_errors():
    with pytest.raises(ConfigError, match=r"unknown grid key 'axis' \(did you mean 'axes'\?\)"):
        parse_grid({"axis": {}}, "g.yaml")
    with pytest.raises(ConfigError, match=r"exclude: key 'attack.scale' is not an axis"):
        grid({"attack.name": ["none"]}, exclude=[{"attack.scale": 2.0}])
    with pytest.raises(ConfigError, match=r"g.yaml: base: unknown key 'federation.epoch'"):
        grid(base={"federation": {"epoch": 2}})
    with pytest.raises(ConfigError, match=r"g.yaml: axes.attack.fraction: Input should be less "
                                          r"than 1 \(got 2\)"):
        grid({"attack.name": ["none"], "attack.fraction": [2]})  # one value: at parse time
    with pytest.raises(ConfigError,  # values valid alone, not together: when the cell is built
                       match=r"cell attack-dvfsr__fraction-0.0__[0-9a-f]{8}: attack.fraction"):
        grid({"attack.name": ["dvfsr"], "attack.fraction": [0.0]}).cells()
    with pytest.raises(ConfigError, match=r"federation.engine='flower' cannot run inside"):
        grid({"federation.engine": ["flower"]}).cells()
    with pytest.raises(ConfigError, match=r"grid file not found \(bundled grids: .*quickstart"):
        resolve_grid_path("no_such_grid")


def test_load_grid_file_with_base_config_and_overrides(tmp_path: Path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(
        {"mode": "federated", "model": {"hidden": 16}, "federation": {"epochs": 3}}))
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({
        "base_config": "exp.yaml",
        "base": {"federation.epochs": 2, "model": {"blocks": 1}},
        "axes": {"seed": [0, 1]}}))
    g = load_grid(tmp_path / "grid.yaml", ["model.hidden=8"])
    assert g.name == "grid"
    cfg = g.cells()[1].config
    assert (cfg.mode, cfg.model.hidden, cfg.model.blocks, cfg.federation.epochs, cfg.seed) == \
        ("federated", 8, 1, 2, 1)


def test_bundled_quickstart_resolves_and_expands():
    path = resolve_grid_path("quickstart")
    assert path == BUNDLED_DIR / "quickstart.yaml"
    g = load_grid("quickstart")
    cells = g.cells()
    pairs = {(c.config.attack.name, c.config.defense.name) for c in cells}
    assert {(a, d) for a in ("none", "random", "dvfsr")
            for d in ("mean", "median", "dvfsr_hybrid")} <= pairs
    assert all(c.config.data.name == "synthetic" and c.config.federation.engine == "local"
               for c in cells)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "experiments" / "grids").glob("*.yaml"))


@pytest.mark.parametrize("path", [BUNDLED_DIR / "quickstart.yaml", *SHIPPED],
                         ids=lambda p: p.name)
def test_shipped_grids_expand_to_buildable_cells(path: Path):
    from attacks.registry import build_attack
    from attacks.threat import check_knowledge
    from defenses.registry import build_defense

    cells = load_grid(path).cells()
    assert cells
    for c in cells:
        a = c.config.attack
        build_attack(a.name, dict(a.params), a.scale)
        check_knowledge(a)
        build_defense(c.config.defense.name, dict(c.config.defense.params))
