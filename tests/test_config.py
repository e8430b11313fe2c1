"""Experiment config (fedrec.config): one-line errors that name the key, overrides, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedrec.config import ExperimentConfig, dump_config, load_config, parse_override
from fedrec.errors import ConfigError


def error_of(**kw) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(**kw)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_defaults_and_example_config_load():
    cfg = load_config(base={})
    assert cfg == ExperimentConfig()
    path = Path(__file__).resolve().parents[1] / "experiments" / "centralized" / "sasrec_synthetic.yaml"
    cfg = load_config(path)
    assert cfg.name == "sasrec_synthetic" and cfg.mode == "centralized"
    assert cfg.model.name == "sasrec"


@pytest.mark.parametrize(
    "raw,key,hint",
    [
        ({"model": {"hiden": 64}}, "model.hiden", "did you mean 'hidden'"),
        ({"trian": {}}, "trian", "did you mean 'train'"),
        ({"eval": {"n_negative": 5}}, "eval.n_negative", "did you mean 'n_negatives'"),
        ({"data": {"synthetic": {"n_user": 5}}}, "data.synthetic.n_user", "did you mean 'n_users'"),
    ],
)
def test_unknown_key_names_it_with_suggestion(raw, key, hint):
    msg = error_of(base=raw)
    assert f"unknown key '{key}'" in msg
    assert hint in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    msg = error_of(base={"model": {"zzzzzz": 1}})
    assert "model.zzzzzz" in msg and "valid keys" in msg and "hidden" in msg


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"model": {"hidden": "wide"}}, "model.hidden"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"eval": {"full": "maybe"}}, "eval.full"),
        ({"model": {"loss": "mse"}}, "model.loss"),
        ({"eval": {"ks": 10}}, "eval.ks"),
    ],
)
def test_wrong_type_names_the_key(raw, key):
    msg = error_of(base=raw)
    assert msg.startswith(f"config: {key}:"), msg


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"model": {"dropout": 1.5}}, "model.dropout"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"lr": -1e-3}}, "train.lr"),
        ({"eval": {"n_negatives": 0}}, "eval.n_negatives"),
        ({"attack": {"fraction": 1.0}}, "attack.fraction"),
    ],
)
def test_out_of_range_names_the_key(raw, key):
    msg = error_of(base=raw)
    assert msg.startswith(f"config: {key}:"), msg
    assert "got" in msg


def test_cross_field_checks():
    assert "ks" in error_of(base={"eval": {"ks": []}})
    assert "full/sampled" in error_of(base={"eval": {"full": False, "sampled": False}})
    assert "epochs/rounds" in error_of(base={"federation": {"epochs": None}})


def test_overrides_apply_and_parse_yaml_values(tmp_path):
    cfg = load_config(base={}, overrides=["model.hidden=32", "eval.ks=[1, 3]", "train.lr=0.01",
                                          "data.synthetic.n_users=50", "threads=2", "name=x",
                                          "train.metric=sampled/HR@3"])
    assert cfg.model.hidden == 32 and cfg.eval.ks == [1, 3] and cfg.train.lr == 0.01
    assert cfg.train.metric == "sampled/HR@3"
    assert cfg.data.synthetic.n_users == 50 and cfg.threads == 2 and cfg.name == "x"
    # a file's values are overridden, its name defaults to the file stem
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  hidden: 16\n")
    cfg = load_config(path, ["model.hidden=8"])
    assert cfg.model.hidden == 8 and cfg.name == "exp"
    # overrides are validated like the file
    assert "unknown key 'model.hiden'" in error_of(path=path, overrides=["model.hiden=8"])
    assert error_of(path=path, overrides=["model.hidden=x"]).startswith(f"{path}: model.hidden:")


@pytest.mark.parametrize(
    "text,match",
    [
        ("model.hidden", "expected KEY=VALUE"),
        ("=3", "malformed key"),
        ("model..hidden=3", "malformed key"),
        ("model.=3", "malformed key"),
    ],
)
def test_bad_set_syntax(text, match):
    msg = error_of(base={}, overrides=[text])
    assert match in msg and repr(text) in msg


def test_set_into_a_non_section():
    msg = error_of(base={"model": {"hidden": 3}}, overrides=["model.hidden.width=3"])
    assert "'hidden' is not a section" in msg
    assert parse_override("a.b=  [1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=") == (["a"], "")


def test_yaml_syntax_error_reports_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden: 64\n  blocks: [1, 2\ntrain:\n  lr: 0.1\n")
    msg = error_of(path=path)
    assert msg.startswith(f"{path}:"), msg
    line = int(msg[len(str(path)) + 1:].split(":", 1)[0])
    assert line in (3, 4)  # the unclosed bracket opens on line 3; the parser notices on line 4


def test_yaml_tab_error_line(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("model:\n  hidden: 64\n\tblocks: 2\n")
    assert error_of(path=path).startswith(f"{path}:3:")


def test_missing_file_and_non_mapping(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error_of(path=missing) == f"{missing}: config file not found"
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "expected a mapping" in error_of(path=path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "the file is empty" in error_of(path=empty)  # not a silent run of the defaults


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(base={"name": "rt", "model": {"hidden": 24, "attn_dropout": 0.1},
                            "eval": {"ks": [1, 10]}, "attack": {"params": {"a": [1, 2]}},
                            "federation": {"server_betas": [0.8, 0.9]}})
    text = dump_config(cfg)
    assert load_config(base=yaml.safe_load(text)) == cfg
    path = tmp_path / "rt.yaml"
    path.write_text(text)
    assert load_config(path) == cfg


def test_scientific_notation_is_a_float_in_files_and_overrides_as_in_yaml_1_2():
    from fedrec.config import parse_yaml

    got = parse_yaml("a: 1e-3\nb: 1.0e30\nc: -2E+2\nd: 10\ne: 1.5\nf: x1e3\ng: 1e400")
    assert got == {"a": 0.001, "b": 1e30, "c": -200.0, "d": 10, "e": 1.5, "f": "x1e3",
                   "g": float("inf")}
    assert parse_override("model.params.lr=1e-4") == (["model", "params", "lr"], 1e-4)
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is left as it was
    with pytest.raises(ConfigError, match="finite"):
        load_config(base={}, overrides=["train.lr=1e400"])
