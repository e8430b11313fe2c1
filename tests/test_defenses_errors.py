"""Impossible parameters and malformed inputs raise one-line, field-naming errors."""

from __future__ import annotations

import pytest
import torch

from defenses import DEFENSES, AggregationContext, build_defense, defense_params
from fedrec.errors import ConfigError


def _x(n: int) -> dict[str, torch.Tensor]:
    return {"p": torch.randn(n, 4)}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "name,params,n,match",
    [
        ("krum", {"f": 4}, 10,
         r"defense\.krum\.f=4: Krum needs 2f\+2 < n_clients, got n_clients=10"),
        ("krum", {"f": 3}, 7, r"defense\.krum\.f=3"),
        ("multi_krum", {"f": 5}, 11, r"defense\.multi_krum\.f=5"),
        ("multi_krum", {"f": 1, "m": 8}, 7, r"defense\.multi_krum\.m=8: expected 1 <= m <= n"),
        ("bulyan", {"f": 2}, 10, r"defense\.bulyan\.f=2: Bulyan needs n_clients >= 4f\+3 = 11"),
        ("itemwise_krum", {"f": 3}, 8, r"defense\.itemwise_krum\.f=3"),
    ],
)
def test_n_dependent_checks_raise_at_call_time(name, params, n, match):
    rule = build_defense(name, params)  # valid in isolation
    ctx = AggregationContext(item_param_names=("p",)) if name.startswith("itemwise") else None
    stacked = {"p": torch.randn(n, 5, 2), "q": torch.randn(n, 3)} if ctx else _x(n)
    with pytest.raises(ConfigError, match=match) as exc:
        rule(stacked, torch.ones(n), ctx)
    _one_line(exc)


def test_krum_boundary_is_exact():
    # f = (n - 3) / 2 is the largest allowed: 2f + 2 = n - 1 < n
    build_defense("krum", {"f": 3})(_x(9), torch.ones(9))
    with pytest.raises(ConfigError):
        build_defense("krum", {"f": 4})(_x(9), torch.ones(9))  # f >= (n - 2) / 2
    build_defense("bulyan", {"f": 2})(_x(11), torch.ones(11))  # n = 4f + 3


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("trimmed_mean", {"beta": 0.5},
         r"defense\.trimmed_mean\.beta=0\.5: expected 0 <= beta < 0\.5"),
        ("trimmed_mean", {"beta": -0.1}, r"beta=-0\.1"),
        ("itemwise_trimmed_mean", {"beta": 0.7}, r"itemwise_trimmed_mean\.beta=0\.7"),
        ("norm_bound", {"tau": -1.0},
         r"defense\.norm_bound\.tau=-1\.0: expected a finite float > 0"),
        ("norm_bound", {"tau": 0.0}, r"norm_bound\.tau=0\.0"),
        ("centered_clipping", {"tau": -2.0}, r"centered_clipping\.tau=-2\.0"),
        ("centered_clipping", {"tau": 1.0, "iters": 0}, r"centered_clipping\.iters=0"),
        ("centered_clipping", {"tau": 1.0, "momentum": 1.0}, r"centered_clipping\.momentum=1\.0"),
        ("itemwise_norm_bound", {"tau": -1.0}, r"itemwise_norm_bound\.tau=-1\.0"),
        ("itemwise_norm_bound", {"tau": 1.0, "tau_other": -1.0}, r"tau_other=-1\.0"),
        ("krum", {"f": -1}, r"defense\.krum\.f=-1: expected an integer >= 0"),
        ("bulyan", {"f": -3}, r"defense\.bulyan\.f=-3"),
        ("multi_krum", {"f": 1, "m": 0}, r"defense\.multi_krum\.m=0"),
        ("geometric_median", {"nu": 0.0}, r"geometric_median\.nu=0\.0"),
        ("geometric_median", {"max_iter": 0}, r"geometric_median\.max_iter=0"),
        ("geometric_median", {"tol": -1.0}, r"geometric_median\.tol=-1\.0"),
        ("geometric_median", {"flag_distance": 0.5}, r"flag_distance=0\.5"),
        ("dvfsr_hybrid", {"mean_weight": 1.5},
         r"dvfsr_hybrid\.mean_weight=1\.5: expected 0 <= x <= 1"),
        ("dvfsr_hybrid", {"mean_weighting": "median"},
         r"dvfsr_hybrid\.mean_weighting='median': expected 'uniform' or 'examples'"),
        ("flame", {"noise_factor": -0.1}, r"flame\.noise_factor=-0\.1"),
        ("foolsgold", {"kappa": 0.0}, r"foolsgold\.kappa=0\.0"),
        ("foolsgold", {"sketch_dim": 0}, r"foolsgold\.sketch_dim=0"),
        ("hics", {"tau_item": -3.0}, r"hics\.tau_item=-3\.0"),
        ("hics", {"k": 0}, r"hics\.k=0"),
        ("hics", {"fraction": 1.5}, r"hics\.fraction=1\.5"),
        ("hics", {"k": 3, "fraction": 0.5}, r"either k or fraction"),
    ],
)
def test_impossible_parameters_raise_config_error(name, params, match):
    with pytest.raises(ConfigError, match=match) as exc:
        build_defense(name, params)
    _one_line(exc)


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        build_defense("krumm", {})
    msg = _one_line(exc)
    assert "'krumm' is unknown" in msg
    for name in DEFENSES:
        assert name in msg


def test_registry_unknown_parameter_lists_accepted():
    with pytest.raises(ConfigError, match=r"defense\.krum: unknown parameter 'g'; accepted: f$"):
        build_defense("krum", {"g": 1})
    match = r"defense\.median: unknown parameter 'beta'; accepted: \(none\)"
    with pytest.raises(ConfigError, match=match):
        build_defense("median", {"beta": 0.1})


def test_registry_type_errors():
    with pytest.raises(ConfigError, match=r"defense\.krum\.f='2': expected int, got str"):
        build_defense("krum", {"f": "2"})
    with pytest.raises(ConfigError, match=r"defense\.krum\.f=2\.0: expected int, got float"):
        build_defense("krum", {"f": 2.0})
    with pytest.raises(ConfigError, match=r"defense\.trimmed_mean\.beta=True: expected float"):
        build_defense("trimmed_mean", {"beta": True})
    with pytest.raises(ConfigError, match=r"multi_krum\.m='all': expected int \| None"):
        build_defense("multi_krum", {"f": 1, "m": "all"})
    with pytest.raises(ConfigError, match=r"defense\.krum\.f is required"):
        build_defense("krum", {})


def test_registry_accepts_ints_for_floats_and_none_for_optionals():
    rule = build_defense("norm_bound", {"tau": 2})
    assert isinstance(rule.tau, float) and rule.tau == 2.0
    assert build_defense("multi_krum", {"f": 1, "m": None}).m is None
    assert build_defense("trimmed_mean", {"beta": 0}).beta == 0.0


def test_registry_names_and_schemas():
    assert sorted(DEFENSES) == sorted([
        "mean", "unweighted_mean", "sum", "median", "trimmed_mean", "krum", "multi_krum",
        "bulyan", "geometric_median", "dvfsr_hybrid", "norm_bound", "centered_clipping", "flame",
        "foolsgold", "fltrust", "itemwise_median", "itemwise_trimmed_mean", "itemwise_krum",
        "itemwise_norm_bound", "hics",
    ])
    for name, cls in DEFENSES.items():
        assert cls.name == name
    schema = defense_params(DEFENSES["dvfsr_hybrid"])
    assert schema["mean_weight"][1] == 0.3 and schema["max_iter"][1] == 4
    assert schema["tol"][1] == 1e-6 and schema["nu"][1] == 1e-5


@pytest.mark.parametrize(
    "stacked,weights,match",
    [
        ({}, torch.ones(2), r"empty mapping"),
        ({"p": torch.ones(3, 2), "q": torch.ones(2, 2)}, torch.ones(3),
         r"stacked\['q'\]: client dimension 2 != 3"),
        ({"p": torch.ones(3, 2, dtype=torch.long)}, torch.ones(3),
         r"stacked\['p'\]: expected a floating"),
        ({"p": torch.ones(3, 2)}, torch.ones(4), r"weights: expected a Tensor of shape \(3,\)"),
        ({"p": torch.ones(3, 2)}, torch.tensor([1.0, -1.0, 1.0]), r"non-negative"),
        ({"p": torch.ones(3, 2)}, torch.zeros(3), r"sum > 0"),
        ({"p": torch.ones(3, 2)}, torch.tensor([1.0, float("nan"), 1.0]), r"finite"),
    ],
)
def test_malformed_inputs(stacked, weights, match):
    with pytest.raises(ValueError, match=match) as exc:
        build_defense("mean", {})(stacked, weights)
    _one_line(exc)


def test_itemwise_rules_need_item_tables():
    for name, params in [("itemwise_median", {}), ("hics", {})]:
        with pytest.raises(ConfigError, match=rf"defense\.{name}: ctx\.item_param_names is empty"):
            build_defense(name, params)(_x(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"'emb' is not a key"):
        build_defense("itemwise_median", {})(
            _x(3), torch.ones(3), AggregationContext(item_param_names=("emb",))
        )


def test_stateless_rules_reject_state():
    with pytest.raises(ValueError, match="stateless"):
        build_defense("median", {}).load_state_dict({"x": 1})
    build_defense("median", {}).load_state_dict({})


def test_hics_bank_shape_mismatch():
    rule = build_defense("hics", {"k": 1})
    ctx = AggregationContext(item_param_names=("p",))
    rule({"p": torch.randn(3, 5, 2)}, torch.ones(3), ctx)
    with pytest.raises(ValueError, match=r"hics: stored bank of 'p' has shape \(5, 2\)"):
        rule({"p": torch.randn(3, 6, 2)}, torch.ones(3), ctx)
