"""CDL (Lei et al., CVPR 2016): shared item branches, the comparative loss by hand, the digits
setting's synthetic users and warm/cold split, the full-ranking metrics, and a run through
``fedrec run`` that resumes to identical metrics."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from helpers import config_with, strip_timing
from torch.nn import functional as F

from fedrec.baselines.cdl.data import digit_users, load_digits_setting, split_warm_cold
from fedrec.baselines.cdl.model import CDL, comparative_loss, pairwise_distance
from fedrec.baselines.cdl.trainer import CDLTrainer
from fedrec.baselines.topn import topn_metrics
from fedrec.errors import ConfigError
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)


def attached(variant: str = "cdl", shape: tuple[int, ...] = (6,)) -> CDL:
    torch.manual_seed(0)
    m = CDL(variant=variant, hidden=8, dim=4)
    content = torch.randn(10, *shape)
    m.attach(content, 3, torch.randn(3, *shape))
    return m


def test_both_item_branches_are_one_parameter_set_and_their_gradients_add_up():
    m = attached()
    item_params = [n for n, _ in m.named_parameters() if n.startswith("item_net")]
    assert item_params and not any("item_net2" in n for n in item_params)
    u, p, n = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    m.zero_grad()
    m.loss(u, p, n).backward()
    both = [q.grad.clone() for q in m.item_net.parameters()]
    parts = []
    for detach_pos in (True, False):  # gradient through one branch, the other held fixed
        m.zero_grad()
        zu, zp, zn = m.users(u), m.items(p), m.items(n)
        zp, zn = (zp.detach(), zn) if detach_pos else (zp, zn.detach())
        comparative_loss(pairwise_distance(zu, zp), pairwise_distance(zu, zn)).backward()
        parts.append([q.grad.clone() for q in m.item_net.parameters()])
    for g, a, b in zip(both, *parts, strict=True):
        assert torch.allclose(g, a + b, atol=1e-6)
        assert a.abs().sum() > 0 and b.abs().sum() > 0


def test_comparative_loss_equals_softplus_of_the_distance_difference_by_hand():
    m = attached()
    u, p, n = torch.tensor([0, 2]), torch.tensor([1, 7]), torch.tensor([3, 9])
    with torch.no_grad():
        zu, zp, zn = m.users(u).numpy(), m.items(p).numpy(), m.items(n).numpy()
        got = float(m.loss(u, p, n))
    dp = np.sqrt(((zu - zp) ** 2).sum(1))
    dn = np.sqrt(((zu - zn) ** 2).sum(1))
    assert got == pytest.approx(float(np.mean(np.log1p(np.exp(dp - dn)))), rel=1e-5)
    # the cross-entropy against the label, and the swapped pair with the label flipped
    dpt, dnt = torch.as_tensor(dp), torch.as_tensor(dn)
    bce1 = F.binary_cross_entropy(torch.sigmoid(dnt - dpt), torch.ones(2))
    bce0 = F.binary_cross_entropy(torch.sigmoid(dpt - dnt), torch.zeros(2))
    assert got == pytest.approx(float(bce1), rel=1e-5) == pytest.approx(float(bce0), rel=1e-5)


def test_naive_variant_is_pointwise_bce_on_single_pairs():
    m = attached("naive")
    with torch.no_grad():
        m.bias.fill_(0.3)
        u, p, n = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
        zu = m.users(u)
        dp, dn = pairwise_distance(zu, m.items(p)), pairwise_distance(zu, m.items(n))
        want = -(F.logsigmoid(0.3 - dp) + F.logsigmoid(-(0.3 - dn))) / 2
        assert float(m.loss(u, p, n)) == pytest.approx(float(want), rel=1e-5)


def test_image_branch_is_a_cnn_on_digits_and_ranking_is_by_ascending_distance():
    m = attached(shape=(1, 8, 8))
    assert isinstance(m.item_net.net[0], torch.nn.Conv2d)
    with torch.no_grad():
        zu, zi = m.users(torch.tensor([0])), m.items(torch.arange(10))
        s = m.score(zu, zi)[0]
        assert torch.equal(s.argsort(descending=True), (zu - zi).norm(dim=1).argsort())


def test_digit_users_are_seeded_mixtures_and_cold_items_never_train():
    labels = np.repeat(np.arange(10), 30)
    a = digit_users(labels, 20, 12, 0.1, seed=3)
    assert np.array_equal(a, digit_users(labels, 20, 12, 0.1, seed=3))
    assert not np.array_equal(a, digit_users(labels, 20, 12, 0.1, seed=4))
    assert len(np.unique(a, axis=0)) == len(a) == 20 * 12
    # a concentrated Dirichlet: most users take most of their images from few classes
    top = [np.bincount(labels[a[a[:, 0] == u, 1]], minlength=10).max() / 12 for u in range(20)]
    assert np.mean(top) > 0.5
    d = split_warm_cold("t", a, 20, np.zeros((300, 4), np.float32), 0.2, seed=0)
    cold = np.r_[d.cold_valid_items, d.cold_test_items]
    assert len(cold) == 60 and not np.isin(d.train[:, 1], cold).any()
    assert len(d.train) + len(d.valid) + len(d.test) + len(d.cold_valid) + len(d.cold_test) \
        == len(a)
    with pytest.raises(ConfigError, match="cold_fraction"):
        split_warm_cold("t", a, 20, np.zeros((300, 4), np.float32), 1.5, seed=0)


def test_topn_metrics_known_values():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    pos = torch.tensor([[False, True, False, True, False]])
    exc = torch.tensor([[True, False, False, False, False]])
    m = topn_metrics(scores, pos, exc, [1, 2])
    # ranking without item 0: 1 (pos), 2, 3 (pos), 4
    assert m["Recall@1"][0] == pytest.approx(0.5) and m["Recall@2"][0] == pytest.approx(0.5)
    assert m["NDCG@2"][0] == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3)))
    assert m["AUC"][0] == pytest.approx(3 / 4)  # pairs vs negatives {2, 4}: (1>2,1>4,3<2,3>4)


def tiny(**over: Any):
    raw = {"name": "tiny_cdl", "seed": 2, "threads": 1, "mode": "centralized",
           "data": {"synthetic": {"n_users": 20, "n_items": 20, "mean_len": 6, "max_len": 10}},
           "model": {"name": "cdl", "hidden": 16,
                     "params": {"setting": "digits", "dim": 8, "n_users": 40, "per_user": 15}},
           "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "patience": 10,
                     "metric": "warm/NDCG@10"},
           "eval": {"ks": [10], "sampled": False}}
    return config_with(raw, **over)


@contextmanager
def crash_in_step(monkeypatch: pytest.MonkeyPatch, step: int):
    """KeyboardInterrupt at the second ``model.loss`` call of ``step`` (after an Adam step)."""
    original = CDLTrainer.train_step

    def crashing(self, s):
        if s == step:
            real, calls = self.ctx.model.loss, {"n": 0}

            def loss(*args):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise KeyboardInterrupt
                return real(*args)

            self.ctx.model.loss = loss
        return original(self, s)

    monkeypatch.setattr(CDLTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(CDLTrainer, "train_step", original)


def test_run_resumes_to_identical_metrics_and_reports_warm_and_cold(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    assert {"warm/Recall@10", "warm/NDCG@10", "warm/AUC", "cold/Recall@10", "cold/AUC"} \
        <= set(ref["test"])
    with crash_in_step(monkeypatch, 1):
        run_experiment(cfg, tmp_path / "crash", progress=False)
    assert [r["step"] for r in RunDir(tmp_path / "crash").read_metrics()] == [0]
    resumed = run_experiment(cfg, tmp_path / "crash", resume=True, progress=False)
    assert resumed["test"] == ref["test"]
    assert strip_timing(RunDir(tmp_path / "crash").read_metrics()) == \
        strip_timing(RunDir(tmp_path / "ref").read_metrics())


def test_training_lowers_the_loss_and_beats_chance_on_digits():
    d = load_digits_setting(60, 20, 0.2, 0.2, seed=0)
    from fedrec.engine.context import RunContext

    cfg = tiny(**{"train.epochs": 6})
    ctx = RunContext.build(cfg)
    tr = CDLTrainer(ctx, data=d)
    before = tr.evaluate("test")
    losses = [tr.train_step(s)["loss"] for s in range(6)]
    after = tr.evaluate("test")
    assert losses[-1] < losses[0]
    assert after["warm/AUC"] > max(0.6, before["warm/AUC"])
    assert after["cold/AUC"] > 0.6


@pytest.mark.parametrize(("key", "value", "match"), [
    ("model.params.variant", "triplet", "model.params.variant='triplet': expected one of"),
    ("model.params.setting", "flickr", "model.params.setting='flickr'"),
    ("model.params.per_user", 500, "model.params.per_user=500"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match) as exc:
        run_experiment(tiny(**{key: value}), tmp_path / "r", progress=False)
    assert "\n" not in str(exc.value)
