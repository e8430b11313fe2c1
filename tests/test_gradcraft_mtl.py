"""Tests for the multi-task setting used to show GradCraft: models, data builders, training loop
(fedrec.baselines.gradcraft.mtl / data / train)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedrec.baselines.gradcraft.data import (
    load_ml100k_multitask,
    split_random,
    synthetic_multitask,
)
from fedrec.baselines.gradcraft.mtl import PLE, SharedBottom, build_model
from fedrec.baselines.gradcraft.train import MultiTaskConfig, train_multitask
from fedrec.errors import ConfigError, DataFormatError

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def real_data_dir() -> Path:
    """``FEDREC_DATA`` or ``../shared/data``; skip when ml-100k is not there."""
    root = Path(os.environ.get("FEDREC_DATA", DEFAULT_DATA)).resolve()
    if not (root / "ml-100k" / "raw" / "u.user").is_file():
        pytest.skip(f"ml-100k not found under {root} (set FEDREC_DATA)")
    return root


@pytest.fixture(scope="module")
def ml100k(real_data_dir: Path):
    return load_ml100k_multitask(real_data_dir, tasks=("watched", "liked", "loved", "disliked"))


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _inputs(n: int = 32):
    gen = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, v, (n,), generator=gen) for v in (7, 5)], dim=1)
    return cat, torch.rand(n, 3, generator=gen)


def test_ple_gates_are_distributions_and_output_has_one_logit_per_task() -> None:
    model = PLE([7, 5], num_tasks=3, n_dense=3, embedding_dim=4, expert_units=(8,),
                num_shared_experts=2, num_specific_experts=1)
    cat, dense = _inputs()
    gates = model.gate_weights(cat, dense)
    assert gates.shape == (32, 3, 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(32, 3))
    assert model(cat, dense).shape == (32, 3)
    probs = model.predict_proba(cat, dense)
    assert ((probs > 0) & (probs < 1)).all()


def test_task_heads_only_depend_on_their_own_tower() -> None:
    # perturbing task 0's tower changes task 0's logit only (SharedBottom and PLE)
    cat, dense = _inputs()
    for model in (SharedBottom([7, 5], 2, n_dense=3, embedding_dim=4),
                  build_model("ple", [7, 5], 2, n_dense=3, embedding_dim=4)):
        before = model(cat, dense).detach()
        with torch.no_grad():
            model.towers[0][-1].bias.add_(1.0)
        after = model(cat, dense).detach()
        torch.testing.assert_close(after[:, 0], before[:, 0] + 1.0)
        torch.testing.assert_close(after[:, 1], before[:, 1])


def test_build_model_rejects_unknown_name() -> None:
    with pytest.raises(ConfigError, match="model"):
        build_model("mmoe", [3], 2)


# --------------------------------------------------------------------------------------------
# synthetic generator
# --------------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_by_seed() -> None:
    a = synthetic_multitask(n_rows=3000, seed=4)
    b = synthetic_multitask(n_rows=3000, seed=4)
    c = synthetic_multitask(n_rows=3000, seed=5)
    for x, y in ((a.cat, b.cat), (a.labels, b.labels)):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.labels, c.labels)
    assert a.cat.max(axis=0).tolist() < list(a.vocab_sizes)


def test_synthetic_base_rates_and_task_relations() -> None:
    rates = (0.3, 0.1, 0.02)
    n = 40_000
    table = synthetic_multitask(n_rows=n, base_rates=rates, seed=0)
    got = table.labels.mean(axis=0)
    for r, g in zip(rates, got, strict=True):
        assert abs(g - r) <= 4 * math.sqrt(r * (1 - r) / n)
    corr = np.corrcoef(table.labels.T)
    assert corr[0, 1] > 0.05  # rho = (0.8, 0.6): partially shared
    assert corr[0, 2] < -0.02 and corr[1, 2] < -0.02  # rho_2 = -0.6: conflicting


def test_synthetic_rejects_bad_rates() -> None:
    with pytest.raises(ConfigError, match="base_rates"):
        synthetic_multitask(base_rates=(0.3, 1.2))


def test_split_random_partitions_rows() -> None:
    table = synthetic_multitask(n_rows=1000, seed=1)
    data = split_random(table, 0.1, 0.2, seed=0)
    assert (len(data.train), len(data.valid), len(data.test)) == (700, 100, 200)
    rows = np.concatenate([data.train.cat, data.valid.cat, data.test.cat])
    assert np.array_equal(np.sort(rows, axis=0), np.sort(table.cat, axis=0))


# --------------------------------------------------------------------------------------------
# ml-100k task builder
# --------------------------------------------------------------------------------------------
def test_ml100k_tasks_positive_rates_and_splits(ml100k, real_data_dir: Path) -> None:
    tables = (ml100k.train, ml100k.valid, ml100k.test)
    total = sum(len(t) for t in tables)
    labels = np.concatenate([t.labels for t in tables])
    watched, liked, loved, disliked = labels.mean(axis=0)
    assert labels[:, 0].sum() == 100_000  # every observed rating is a row
    assert 0.33 <= watched <= 0.34  # neg_ratio = 2 (a few heavy users have < 2n unrated items)
    ratings = pd.read_csv(real_data_dir / "ml-100k" / "ratings.csv")
    assert liked * total == pytest.approx((ratings["rating"] >= 4).sum())
    assert loved * total == pytest.approx((ratings["rating"] == 5).sum())
    assert disliked * total == pytest.approx((ratings["rating"] <= 2).sum())
    assert watched > liked > loved
    # nesting: loved -> liked -> watched; disliked excludes liked
    assert (labels[:, 2] <= labels[:, 1]).all() and (labels[:, 1] <= labels[:, 0]).all()
    assert not (labels[:, 3] * labels[:, 1]).any()
    # no (user, item) pair in two splits; every user in every split
    keys = [set(map(tuple, t.cat[:, :2].tolist())) for t in tables]
    assert sum(len(k) for k in keys) == total == len(set().union(*keys))
    for t in tables:
        assert len(np.unique(t.users)) == 943


def test_ml100k_split_is_per_user_time(ml100k, real_data_dir: Path) -> None:
    ratings = pd.read_csv(real_data_dir / "ml-100k" / "ratings.csv")
    ts = dict(zip(zip(ratings["user"], ratings["item"]), ratings["timestamp"], strict=True))
    def observed_times(table):
        rows = table.cat[table.labels[:, 0] == 1]
        return pd.DataFrame({"user": rows[:, 0], "t": [ts[(u, i)] for u, i in rows[:, :2]]})
    train_max = observed_times(ml100k.train).groupby("user")["t"].max()
    test_min = observed_times(ml100k.test).groupby("user")["t"].min()
    assert (train_max <= test_min.reindex(train_max.index)).all()


def _write_ml100k(root: Path, ratings: str, users: str | None, items: str | None) -> None:
    folder = root / "ml-100k"
    (folder / "raw").mkdir(parents=True)
    (folder / "ratings.csv").write_text(ratings)
    if users is not None:
        (folder / "raw" / "u.user").write_text(users, encoding="latin-1")
    if items is not None:
        (folder / "raw" / "u.item").write_text(items, encoding="latin-1")


_ITEM = "{}|Caf\xe9 ({})|01-Jan-1995||http://x|" + "|".join(["0"] * 18) + "|1\n"


def test_ml100k_builder_on_tiny_files(tmp_path: Path) -> None:
    ratings = "user,item,rating,timestamp\n" + "".join(
        f"{u},{i},{1 + (u + i) % 5},{100 * u + i}\n" for u in (1, 2) for i in range(1, 11)
    )
    users = "1|24|M|technician|85711\n2|53|F|other|94043\n"
    items = "".join(_ITEM.format(i, 1990) for i in range(1, 41))
    _write_ml100k(tmp_path, ratings, users, items)
    data = load_ml100k_multitask(tmp_path, neg_ratio=1, seed=0)
    assert sum(len(t) for t in (data.train, data.valid, data.test)) == 40
    assert data.train.dense.shape[1] == 19 and data.train.field_names[0] == "user_id"
    assert data.info["positive_rates"]["train"]["watched"] == pytest.approx(0.5)


def test_ml100k_missing_or_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="ratings.csv"):
        load_ml100k_multitask(tmp_path / "nowhere")
    good = "user,item,rating,timestamp\n1,1,5,10\n"
    _write_ml100k(tmp_path / "a", good, None, _ITEM.format(1, 1990))
    with pytest.raises(DataFormatError, match="u.user"):
        load_ml100k_multitask(tmp_path / "a")
    _write_ml100k(tmp_path / "b", good + "1,2,seven,11\n", "1|24|M|x|1\n", _ITEM.format(1, 1990))
    with pytest.raises(DataFormatError, match=r"ratings.csv:3") as info:
        load_ml100k_multitask(tmp_path / "b")
    assert "\n" not in str(info.value)
    _write_ml100k(tmp_path / "c", good, "1|24|M|x|1\n", "1|only|three\n")
    with pytest.raises(DataFormatError, match=r"u.item:1"):
        load_ml100k_multitask(tmp_path / "c")


# --------------------------------------------------------------------------------------------
# training loop and config
# --------------------------------------------------------------------------------------------
_TINY = {
    "dataset": "synthetic",
    "synthetic": {"n_rows": 3000, "n_users": 100, "n_items": 200},
    "model": "ple",
    "embedding_dim": 4,
    "hidden_units": [16],
    "tower_units": [8],
    "batch_size": 512,
    "epochs": 3,
    "patience": 2,
    "lr": 0.01,
    "num_threads": 1,  # tiny model: avoid thread oversubscription on a shared machine
}


@pytest.mark.parametrize("combiner", ["gradcraft", "pcgrad"])
def test_train_multitask_is_reproducible(combiner: str) -> None:
    cfg = {**_TINY, "combiner": combiner}
    a, b = train_multitask(cfg), train_multitask(cfg)
    assert a["test"] == b["test"] and a["history"] == b["history"]
    assert set(a["test"]["auc"]) == {"task0", "task1", "task2"}
    assert all(0.0 <= v <= 1.0 for v in a["test"]["auc"].values())
    assert a["mean_auc"] == pytest.approx(np.mean(list(a["test"]["auc"].values())))
    # early stopping restores the best epoch: reported valid score = best of the history
    assert a["valid"]["mean_auc"] == max(h["valid_mean_auc"] for h in a["history"])
    assert a["seconds_per_epoch"] > 0 and 1 <= a["epochs"] <= 3


def test_train_multitask_learns_the_dense_task() -> None:
    syn = {"n_rows": 6000, "n_users": 60, "n_items": 80, "signal": 4.0}
    res = train_multitask({**_TINY, "combiner": "gradcraft", "epochs": 6, "synthetic": syn})
    history = [h["valid_mean_auc"] for h in res["history"]]
    assert max(history) > history[0] + 0.05
    assert res["test"]["auc"]["task0"] > 0.6 and res["test"]["auc"]["task1"] > 0.6


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"combiner_params": {"tau": 2.0}}, "tau"),
        ({"combiner": "nope"}, "combiner"),
        ({"lr": 0}, "lr"),
        ({"bogus": 1}, "bogus"),
        ({"dataset": "ml-100k"}, "data_dir"),
        ({"model": "mmoe"}, "model"),
    ],
)
def test_config_errors_are_one_line_and_name_the_field(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        MultiTaskConfig.from_mapping({**_TINY, **patch})
    assert field in str(info.value) and "\n" not in str(info.value)
