"""Bad experiment configs through ``fedrec run`` (issue 11).

Every bad input must give exactly one ``error:`` line that names the file or the dotted key and
what was expected, exit status 2, and no traceback; nothing may be trained or written first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from fedrec.config import ExperimentConfig, load_config, read_yaml
from fedrec.data.synthetic import SyntheticSpec
from fedrec.errors import ConfigError

TINY = """\
mode: centralized
seed: 1
threads: 1
data:
  synthetic: {n_users: 60, n_items: 30, mean_len: 6}
model: {name: sasrec, hidden: 8, blocks: 1, max_len: 8}
train: {epochs: 1, batch_size: 32}
eval: {ks: [10], n_negatives: 10}
"""


def write(tmp_path: Path, text: str | bytes = TINY, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def cli_error(tmp_path: Path, config: Path, *sets: str, before_run_dir: bool = True) -> str:
    """Run ``fedrec run CONFIG --set ...``; assert one error line, exit 2; return the line.

    ``before_run_dir``: the error must come before the run directory is made (config errors;
    a data file is read after it).
    """
    args = ["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert not (before_run_dir and (tmp_path / "run").exists())
    return lines[0]


# ----------------------------------------------------------------------------- 1. seeds


@pytest.mark.parametrize("key", ["seed", "eval.seed", "data.synthetic.seed",
                                 "attack.targets.seed"])
def test_negative_seed_is_a_config_error(tmp_path, key):
    line = cli_error(tmp_path, write(tmp_path), f"{key}=-1")
    assert f": {key}:" in line and ">= 0" in line.replace("greater than or equal to 0", ">= 0")


def test_negative_seed_in_a_real_process_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("fedrec")
    res = subprocess.run([str(exe), "run", str(write(tmp_path)), "--set", "seed=-1",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ")


# ----------------------------------------------------------------------------- 2. train.metric


@pytest.mark.parametrize("metric, hint", [
    ("full/NDCG@11", "did you mean 'full/NDCG@10'?"),
    ("foo", "full/HR@10"),
    ("full/ER@10", "full/NDCG@10"),
])
def test_unknown_train_metric_is_a_config_error_at_load(tmp_path, metric, hint):
    line = cli_error(tmp_path, write(tmp_path), f"train.metric={metric}")
    assert "train.metric" in line and repr(metric) in line and hint in line


def test_train_metric_must_be_produced_by_an_enabled_protocol(tmp_path):
    line = cli_error(tmp_path, write(tmp_path), "eval.full=false")
    assert "train.metric" in line and "'full/NDCG@10'" in line and "sampled/NDCG@10" in line


def test_metrics_of_models_with_their_own_trainer():
    # GCL4SR has its own trainer but the standard evaluation: checked like SASRec
    with pytest.raises(ConfigError, match=r"train.metric: 'full/NDCG@7' is not evaluated"):
        load_config(base={"model": {"name": "gcl4sr"}, "train": {"metric": "full/NDCG@7"}})
    # SASS and SITN report their own names (checked by their trainers): not refused here
    assert load_config(base={"model": {"name": "sass"}, "train": {"metric": "full/Recall@20"}})
    assert load_config(base={"model": {"name": "sitn"}, "train": {"metric": "sampled/AUC"}})


def test_valid_metrics_load_and_unused_metric_is_not_checked():
    from fedrec.config import metric_names

    for metric in ("full/HR@10", "sampled/NDCG@10", "full/MRR", "sampled/MRR"):
        assert load_config(base={"train": {"metric": metric}, "eval": {"ks": [10]}})
    assert metric_names(ExperimentConfig().eval) == [
        f"{p}/{m}" for p in ("full", "sampled")
        for m in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")]
    # federated and multitask runs do not early-stop on train.metric: not checked there
    cfg = load_config(base={"mode": "federated", "eval": {"ks": [5]}})
    assert cfg.train.metric == "full/NDCG@10"


# ----------------------------------------------------------------------------- 3. encoding


def test_config_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, TINY.encode() + b"name: caf\xe9\n")
    line = cli_error(tmp_path, path)
    assert line.startswith(f"error: {path}:9:") and "UTF-8" in line


# ----------------------------------------------------------------------------- 4. server_betas


@pytest.mark.parametrize("betas", ["[1.0, 0.999]", "[0.9, 1.5]", "[-0.1, 0.9]"])
def test_server_betas_outside_unit_interval(tmp_path, betas):
    line = cli_error(tmp_path, write(tmp_path), f"federation.server_betas={betas}")
    assert "federation.server_betas" in line


# ----------------------------------------------------------------------------- 5. non-finite


@pytest.mark.parametrize("setting, key", [
    ("train.lr=.inf", "train.lr"),
    ("model.dropout=.nan", "model.dropout"),
    ("federation.server_betas=[0.9, .nan]", "federation.server_betas[1]"),
    ("attack.params={x: [1, .nan]}", "attack.params.x[1]"),
    ("defense.params.beta=-.inf", "defense.params.beta"),
    ("model.params.w=.inf", "model.params.w"),
    ("multitask.lr=.nan", "multitask.lr"),
])
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, setting, key):
    line = cli_error(tmp_path, write(tmp_path), setting)
    assert f": {key}:" in line and "expected a finite number" in line


def test_non_finite_number_in_file(tmp_path):
    line = cli_error(tmp_path, write(tmp_path, TINY + "attack:\n  params: {a: {b: .inf}}\n"))
    assert line.startswith(f"error: {tmp_path / 'tiny.yaml'}: attack.params.a.b:")


# ----------------------------------------------------------------------------- 6. empty file


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  # another\n", "---\n"])
def test_empty_config_file_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    line = cli_error(tmp_path, path)
    assert line.startswith(f"error: {path}:") and "is empty" in line[len(str(path)):]


# ----------------------------------------------------------------------------- 7. duplicates


@pytest.mark.parametrize("text, key, line_no, first", [
    (TINY + "seed: 2\n", "seed", 9, 2),
    ("model:\n  hidden: 8\n  blocks: 1\n  hidden: 16\n", "hidden", 4, 2),
    ("attack:\n  params: {a: {b: 1, b: 2}}\n", "b", 2, 2),
    ("model: {}\ntrain: {}\nmodel: {}\n", "model", 3, 1),
])
def test_duplicate_yaml_key_names_key_and_line(tmp_path, text, key, line_no, first):
    path = write(tmp_path, text)
    line = cli_error(tmp_path, path)
    assert line.startswith(f"error: {path}:{line_no}: duplicate key {key!r}"), line
    assert f"line {first}" in line


def test_duplicate_key_in_set_value(tmp_path):
    line = cli_error(tmp_path, write(tmp_path), "attack.params={a: 1, a: 2}")
    assert "duplicate key 'a'" in line and "--set" in line


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = write(tmp_path, "model:\n  <<: {hidden: 8, blocks: 1}\n  hidden: 16\n")
    assert read_yaml(path) == {"model": {"hidden": 16, "blocks": 1}}


# ----------------------------------------------------------------------------- 8. min/max len


@pytest.mark.parametrize("sets, key, other", [
    (("data.synthetic.min_len=10", "data.synthetic.max_len=8"), "min_len", "max_len (8)"),
    (("data.synthetic.min_len=300",), "min_len", "max_len (200, the default)"),
    (("data.synthetic.max_len=4",), "max_len", "min_len (5, the default)"),
    (("data.synthetic.min_len=7",), "min_len", "mean_len (6.0)"),
])
def test_synthetic_min_len_above_max_len_names_the_key_set(tmp_path, sets, key, other):
    line = cli_error(tmp_path, write(tmp_path), *sets)
    assert f": data.synthetic.{key}:" in line and other in line, line


def test_synthetic_spec_names_min_len_and_max_len_before_mean_len():
    with pytest.raises(ConfigError) as exc:
        SyntheticSpec(min_len=10, max_len=8, mean_len=5).validate()
    assert str(exc.value) == "data.synthetic.min_len=10: expected <= data.synthetic.max_len=8"


# ----------------------------------------------------------------------------- 9. names


@pytest.mark.parametrize("sets, key, hint", [
    (("mode=federated", "attack.name=dvfrs"), "attack.name", "did you mean 'dvfsr'?"),
    (("attack.name=dvfrs",), "attack.name", "did you mean 'dvfsr'?"),
    (("defense.name=meen",), "defense.name", "did you mean 'mean'?"),
    (("model.name=sasrek",), "model.name", "did you mean 'sasrec'?"),
    (("attack.name=zzzz",), "attack.name", "valid names:"),
])
def test_unknown_component_name_is_refused_at_load(tmp_path, sets, key, hint):
    line = cli_error(tmp_path, write(tmp_path), *sets)
    assert f": {key}:" in line and hint in line
    assert "valid names:" in line


def test_default_names_are_registered():
    from attacks.registry import attack_names
    from defenses.registry import DEFENSES
    from fedrec.models import all_model_names

    cfg = ExperimentConfig()
    assert cfg.attack.name in attack_names()
    assert cfg.defense.name in DEFENSES
    assert cfg.model.name in all_model_names()


# ----------------------------------------------------------------------------- multitask


def test_multitask_example_loads_with_fedrec_data_and_names_data_dir_without(monkeypatch,
                                                                             tmp_path):
    example = Path(__file__).resolve().parents[1] / "experiments" / "multitask" / \
        "gradcraft_ml100k.yaml"
    monkeypatch.setenv("FEDREC_DATA", str(tmp_path))
    assert load_config(example).multitask_config().data_dir == tmp_path
    monkeypatch.delenv("FEDREC_DATA")
    line = cli_error(tmp_path, example)
    assert ": multitask.data_dir: not set" in line and "FEDREC_DATA" in line


# ----------------------------------------------------------------------------- 10. data files


@pytest.mark.parametrize("line, words", [
    (f"4 1 {2**70} 3\n", f"item id {2**70} is too large"),
    ("4 1 \uff12 3\n", "item id '\uff12' is not an integer"),
    ("4 1 1_0 3\n", "item id '1_0' is not an integer"),
])
def test_bad_id_in_a_data_file_is_one_line_with_file_and_line(tmp_path, line, words):
    data = write(tmp_path, "1 1 2 3\n2 2 3 4\n3 1 3 4\n" + line, "seq.txt")
    line_out = cli_error(tmp_path, write(tmp_path), f"data.path={data}", before_run_dir=False)
    assert line_out.startswith(f"error: {data}:4: ") and words in line_out
