"""MG-BERT/PMGT: the item graph's edge weight, the MCN sampler's ordered context on hand-made
graphs, masking, the diversity-promoting attention, the two reconstruction losses, the NCF's
split scoring, and a run through ``fedrec run`` that resumes to identical metrics."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from helpers import config_with, strip_timing
from torch.nn import functional as F

from fedrec.baselines.mgbert.data import split_pairs
from fedrec.baselines.mgbert.encoder import (
    GraphTransformer,
    diversity_attention,
    feature_loss,
    structure_loss,
)
from fedrec.baselines.mgbert.graph import (
    MASK,
    build_item_graph,
    mask_context,
    mcn_context,
    multi_hop,
    sample_neighbours,
)
from fedrec.baselines.mgbert.model import NCF
from fedrec.baselines.mgbert.trainer import MGBertTrainer
from fedrec.errors import ConfigError
from fedrec.results import RunDir
from fedrec.runner import run_experiment

torch.set_num_threads(1)


def test_edge_weight_is_the_codes_formula_on_a_hand_made_graph():
    # items 0,1,2 shared by users 0..4; item 3 by users 0..2 (r = 3 with each of 0,1,2);
    # item 4 only by user 0 (r = 1 < threshold: no edge)
    pairs = np.array([[u, i] for u in range(5) for i in (0, 1, 2)]
                     + [[0, 3], [1, 3], [2, 3], [0, 4]])
    g = build_item_graph(pairs, 5, threshold=3)
    assert g.n_edges == 6 and g.degree.tolist() == [3, 3, 3, 3, 0]
    w01 = (math.log(5) + 1) / (math.log(math.sqrt(3 * 3)) + 1)
    w03 = (math.log(3) + 1) / (math.log(math.sqrt(3 * 3)) + 1)
    row0 = dict(zip(g.neighbours(0).tolist(), g.weights[g.indptr[0]:g.indptr[1]], strict=True))
    assert row0 == pytest.approx({1: w01, 2: w01, 3: w03})


def test_mcn_context_counts_tiled_hops_and_breaks_ties_by_first_occurrence():
    # hop 1 tiled x2, hop 2 x1: counts 5:2, 7:3, 9:3 -> 7 (first met) before 9, then 5
    hops = [np.array([[5, 7]]), np.array([[7, 9, 9, 9]])]
    got = mcn_context(hops, 3, np.random.default_rng(0))
    assert got.tolist() == [[7, 9, 5]]
    # without the tiling the order would be 9, 7, 5
    assert mcn_context(hops, 2, np.random.default_rng(0)).tolist() == [[7, 9]]


def test_sampler_on_a_two_node_graph_gives_the_expected_context():
    # 0 - 1 connected, 2 isolated: from 0 hops are all 1, all 0, all 1 (10, 50, 100 draws)
    pairs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    g = build_item_graph(pairs, 3, threshold=2)
    rng = np.random.default_rng(1)
    hops = multi_hop(g, np.array([0, 2]), (10, 5, 2), rng)
    assert [h.shape for h in hops] == [(2, 10), (2, 50), (2, 100)]
    ctx = mcn_context(hops, 2, rng)
    assert ctx[0].tolist() == [1, 0]  # 1: 30 + 100 = 130 counts, 0: 100
    assert ctx[1].tolist() == [2, 2]  # an isolated node is its own neighbour


def test_neighbours_are_drawn_in_proportion_to_the_edge_weight():
    pairs = np.array([[u, i] for u in range(6) for i in (0, 1)] + [[u, 2] for u in range(3)])
    g = build_item_graph(pairs, 3, threshold=1)
    w = dict(zip(g.neighbours(0).tolist(), g.weights[g.indptr[0]:g.indptr[1]], strict=True))
    draws = sample_neighbours(g, np.zeros(20000, dtype=np.int64), 1,
                              np.random.default_rng(0)).ravel()
    share = np.mean(draws == 1)
    assert set(np.unique(draws)) == {1, 2}
    assert share == pytest.approx(w[1] / (w[1] + w[2]), abs=0.01)


def test_masking_replaces_exactly_the_chosen_positions_with_bert_rates():
    ctx = np.tile(np.arange(100, 110), (4000, 1))
    masked, pos, tgt = mask_context(ctx, 2, 1000, np.random.default_rng(0))
    assert pos.shape == (4000, 2) and (np.diff(pos, axis=1) > 0).all()
    rows = np.arange(4000)[:, None]
    assert np.array_equal(tgt, ctx[rows, pos])
    other = np.ones_like(ctx, dtype=bool)
    other[rows, pos] = False
    assert np.array_equal(masked[other], ctx[other])  # untouched elsewhere
    new = masked[rows, pos]
    assert np.mean(new == MASK) == pytest.approx(0.8, abs=0.02)
    assert np.mean(new == tgt) == pytest.approx(0.1, abs=0.02)


def test_attention_rows_sum_to_one_and_alpha_zero_is_standard_attention():
    torch.manual_seed(0)
    q, k, d = (torch.randn(3, 2, 5, 4) for _ in range(3))
    for alpha in (0.0, 0.2, 1.0):
        p = diversity_attention(q, k, d, alpha)
        assert torch.allclose(p.sum(-1), torch.ones(3, 2, 5), atol=1e-6)
    standard = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    assert torch.allclose(diversity_attention(q, k, d, 0.0), standard)
    assert not torch.allclose(diversity_attention(q, k, d, 0.2), standard)
    v = torch.randn(3, 2, 5, 4)
    assert torch.allclose(standard @ v, F.scaled_dot_product_attention(q, k, v), atol=1e-5)


def test_diversity_term_weights_dissimilar_nodes_up():
    # nodes 0 and 1 point the same way, node 2 orthogonal: row 0 of the diversity term gives
    # node 2 weight e^1, node 1 e^0, itself e^(0 + 1)
    d = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])[None, None]
    zeros = torch.zeros_like(d)
    p = diversity_attention(zeros, zeros, d, 1.0)[0, 0, 0]
    e = math.e
    assert p.tolist() == pytest.approx([e / (2 * e + 1), 1 / (2 * e + 1), e / (2 * e + 1)])


def test_feature_loss_touches_only_masked_positions():
    torch.manual_seed(0)
    recon = torch.randn(2, 4, 3, requires_grad=True)
    pos = torch.tensor([[0, 2], [1, 2]])
    tgt = torch.randn(2, 2, 3)
    loss = feature_loss(recon, pos, tgt)
    loss.backward()
    touched = (recon.grad.abs().sum(-1) > 0).tolist()
    assert touched == [[False, True, False, True], [False, False, True, True]]
    want = ((recon[0, [1, 3]] - tgt[0]) ** 2).sum() + ((recon[1, [2, 3]] - tgt[1]) ** 2).sum()
    assert float(loss.detach()) == pytest.approx(float(want.detach()) / 12, rel=1e-6)
    exact = recon.detach().clone()
    exact[0, [1, 3]], exact[1, [2, 3]] = tgt[0], tgt[1]
    assert float(feature_loss(exact, pos, tgt)) == 0.0


def test_structure_loss_is_bce_on_cosine_logits_in_minus_one_one():
    torch.manual_seed(0)
    feats = torch.randn(6, 10)
    enc = GraphTransformer(feats, (6, 4), 8, 2, 1, 8, 3, 0.0, 0.2)
    pooled, states = enc(torch.tensor([[0, 1, 2, MASK], [3, 4, 5, 0]]))
    assert states.shape == (2, 4, 8)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(2))
    a, b, c = pooled[:1], pooled[1:], -pooled[1:]
    cos_ab = float((a * b).sum().detach())
    assert -1 <= cos_ab <= 1
    want = 0.5 * (math.log1p(math.exp(-cos_ab)) + math.log1p(math.exp(-cos_ab)))
    assert float(structure_loss(a, b, c).detach()) == pytest.approx(want, rel=1e-5)


def test_ncf_full_scores_equal_pairwise_forward():
    torch.manual_seed(0)
    ncf = NCF(4, 7, 8, 2, 0.0).eval()
    u = torch.tensor([0, 3])
    full = ncf.score_all(u)
    pair = torch.stack([ncf(torch.full((7,), int(x)), torch.arange(7)) for x in u])
    assert torch.allclose(full, pair, atol=1e-5)
    loss = ncf.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    sp, sn = ncf(torch.tensor([0]), torch.tensor([1])), ncf(torch.tensor([0]), torch.tensor([2]))
    assert float(loss.detach()) == pytest.approx(-math.log2(float(torch.sigmoid(sp - sn).detach())), rel=1e-5)


def test_splits_random80_and_leave_one_out():
    users = [1, 2]
    seqs = [np.arange(1, 41), np.array([5, 6, 7, 8])]
    tr, va, te = split_pairs(users, seqs, "loo", 0)
    assert te.tolist() == [[0, 39], [1, 7]] and va.tolist() == [[0, 38], [1, 6]]
    tr, va, te = split_pairs(users, seqs, "random80", 0)
    assert len(tr) + len(va) + len(te) == 44 and len(te) > 0
    assert not set(map(tuple, te.tolist())) & set(map(tuple, tr.tolist()))
    with pytest.raises(ConfigError, match="model.params.protocol='x'"):
        split_pairs(users, seqs, "x", 0)


def tiny(**over: Any):
    raw = {"name": "tiny_mgbert", "seed": 1, "threads": 1, "mode": "centralized",
           "data": {"synthetic": {"n_users": 20, "n_items": 20, "mean_len": 6, "max_len": 10}},
           "model": {"name": "mgbert", "hidden": 16, "heads": 2, "blocks": 1, "dropout": 0.0,
                     "params": {"dataset": "synthetic", "inner": 16, "graph_threshold": 2,
                                "pretrain_epochs": 2, "pretrain_batch": 32, "hops": [4, 2],
                                "context": 5, "mask_prob": 0.4, "sparse_max": 3,
                                "synthetic": {"n_users": 80, "n_items": 50, "per_user": 8}}},
           "train": {"epochs": 3, "batch_size": 64, "lr": 0.01, "patience": 10,
                     "metric": "full/Recall@10"},
           "eval": {"ks": [10], "sampled": False}}
    return config_with(raw, **over)


@contextmanager
def crash_in_step(monkeypatch: pytest.MonkeyPatch, step: int, stage: str):
    """KeyboardInterrupt at the second batch of ``step`` (pre-training or NCF stage)."""
    original = MGBertTrainer.train_step

    def crashing(self, s):
        if s == step:
            target, name = ((self, "_encode_masked") if stage == "pretrain"
                            else (self.ctx.model.ncf, "loss"))
            real, calls = getattr(target, name), {"n": 0}
            limit = 4 if stage == "pretrain" else 2  # 3 encodings per pre-training batch

            def wrapped(*args):
                calls["n"] += 1
                if calls["n"] == limit:
                    raise KeyboardInterrupt
                return real(*args)

            setattr(target, name, wrapped)
        return original(self, s)

    monkeypatch.setattr(MGBertTrainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(MGBertTrainer, "train_step", original)


def test_run_resumes_to_identical_metrics_in_both_stages(tmp_path, monkeypatch):
    cfg = tiny()
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    assert {"full/Recall@10", "full/NDCG@10", "full/AUC", "sparse/Recall@10"} <= set(ref["test"])
    log = RunDir(tmp_path / "ref").read_metrics()
    assert [r["stage"] for r in log] == ["pretrain"] * 2 + ["ncf"] * 3
    assert all(0.0 <= r["train/link_AUC"] <= 1.0 for r in log[:2])
    for step, stage in ((1, "pretrain"), (3, "ncf")):
        out = tmp_path / f"crash_{stage}"
        with crash_in_step(monkeypatch, step, stage):
            run_experiment(cfg, out, progress=False)
        resumed = run_experiment(cfg, out, resume=True, progress=False)
        assert resumed["test"] == ref["test"]
        assert strip_timing(RunDir(out).read_metrics()) == strip_timing(log)


def test_pretrained_item_vectors_initialise_the_ncf_and_random_init_skips_pretraining(tmp_path):
    from fedrec.engine.context import RunContext
    from fedrec.runner import build_trainer

    ctx = RunContext.build(tiny())
    tr = build_trainer(ctx.cfg, ctx)
    for s in range(tr.pre_steps):
        tr.train_step(s)
    vec = tr.item_vectors()
    tr.train_step(tr.pre_steps)  # the first NCF step sets the item table, then trains it
    assert torch.allclose(vec.norm(dim=1), torch.ones(len(vec)), atol=1e-5)
    moved = (ctx.model.ncf.item.weight - vec).norm() / vec.norm()
    assert 0 < float(moved.detach()) < 0.5
    rnd = run_experiment(tiny(**{"model.params.init": "random"}), tmp_path / "r", progress=False)
    assert rnd["steps_run"] == 3


@pytest.mark.parametrize(("key", "value", "match"), [
    ("model.params.alpha", 1.5, r"model.params.alpha=1.5: expected in \[0, 1\]"),
    ("model.params.init", "bert", "model.params.init='bert'"),
    ("model.params.mask_prob", 0.01, "model.params.mask_prob=0.01"),
    ("model.params.nonsense", 1, "model.nonsense: not a parameter of mgbert"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match) as exc:
        run_experiment(tiny(**{key: value}), tmp_path / "r", progress=False)
    assert "\n" not in str(exc.value)
