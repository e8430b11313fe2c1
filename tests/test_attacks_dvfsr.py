"""DV-FSR: substitution (explicit view), contrastive view, ablation aliases, promotion effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import param_copy, small_model
from torch.nn import functional as F

from attacks.common import as_input, input_embeddings, next_logits
from attacks.dvfsr import (
    DVFSR,
    contrastive_loss,
    dvfsr_loss,
    implicit_loss,
    substitute,
    target_probability,
)
from attacks.registry import build_attack
from attacks.threat import ThreatModel
from clients.update import RoundConfig

torch.set_num_threads(1)
N_ITEMS = 40


def _model(name: str = "sasrec", dropout: float = 0.0, seed: int = 0):
    return small_model(name, N_ITEMS, dropout=dropout, seed=seed)


def _threat(target: int = 7, history=None) -> ThreatModel:
    history = np.array([3, 9, 12, 5, 22, 31, 14, 2, 18]) if history is None else np.asarray(history)
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 12, size=50)
    return ThreatModel(n_users=50, malicious_ids=np.array([50]), accounts={50: history},
                       targets=np.array([target]), lengths=lengths)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_substitution_raises_target_probability_and_respects_limits(name):
    # float64: substitute() scores its candidates in one batch, the reference one sequence at a
    # time (different kernels/reduction order); in float64 the two agree to ~1e-15
    model = _model(name).double()
    target = torch.tensor([7])
    hist = np.array([3, 9, 12, 5, 22, 31, 14, 2, 18])
    seq = as_input(model, [hist])
    model.eval()
    with torch.no_grad():
        p0 = float(target_probability(model, seq, target)[0])
    polluted, info = substitute(model, seq, target, positions=2, min_similarity=0.0, candidates=10)
    with torch.no_grad():
        p1 = float(target_probability(model, polluted, target)[0])
    assert info["prob_before"] == pytest.approx(p0, rel=1e-10)
    assert p1 == pytest.approx(info["prob_after"], rel=1e-10)
    assert p1 > p0  # with a permissive threshold some candidate improves a random model
    changed = (polluted != seq)[0]
    assert 1 <= int(changed.sum()) <= 2
    assert torch.equal(polluted[seq == 0], seq[seq == 0])  # padding untouched


def test_substitution_candidates_satisfy_similarity_threshold():
    model = _model()
    emb = model.item_emb.weight.detach()
    target = torch.tensor([7])
    seq = as_input(model, [np.array([3, 9, 12, 5, 22, 31, 14, 2, 18])])
    for thr in (0.0, 0.2):
        polluted, _ = substitute(model, seq, target, positions=3, min_similarity=thr, candidates=40)
        for pos in torch.nonzero(polluted[0] != seq[0]).flatten().tolist():
            old, new = int(seq[0, pos]), int(polluted[0, pos])
            assert F.cosine_similarity(emb[old], emb[new], dim=0) >= thr - 1e-6
    # a threshold nothing passes leaves the sequence unchanged
    polluted, info = substitute(model, seq, target, positions=3, min_similarity=0.9999, candidates=10)
    assert torch.equal(polluted, seq) and info["changed"] == 0


def test_substitution_never_places_target_after_target():
    model = _model()
    target = 7
    with torch.no_grad():  # make item 7 the most similar item to everything
        model.item_emb.weight[target] = model.item_emb.weight[1:].mean(0) * 5
    hist = np.array([3, 7, 12, 5])
    seq = as_input(model, [hist])
    polluted, _ = substitute(model, seq, torch.tensor([target]), positions=4, min_similarity=-1.0,
                             candidates=40)
    row = polluted[0].tolist()
    for a, b in zip(row[:-1], row[1:]):
        assert not (a == target and b == target)


def test_infonce_known_value_and_label_on_positive():
    # float64: the loss is logsumexp(logits) - logit_0 ~ 2.14 - 2, so in float32 the rounding
    # of the ~2.14 term (and the CPU's exp/log kernels) alone costs ~1e-6 relative on ~0.14;
    # in float64 the same cancellation leaves ~1e-15, far inside rel=1e-12
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    expected = -np.log(np.exp(1.0) / (np.exp(1.0) + np.exp(0.0) + np.exp(-1.0)))
    assert contrastive_loss(a, p, n, 1.0).dtype == torch.float64
    assert float(contrastive_loss(a, p, n, 1.0)) == pytest.approx(expected, rel=1e-12)
    # temperature divides the cosine logits
    expected_t = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(0.0) + np.exp(-2.0)))
    assert float(contrastive_loss(a, p, n, 0.5)) == pytest.approx(expected_t, rel=1e-12)
    # swapping positive and a negative makes the loss larger (the label is the positive)
    assert float(contrastive_loss(a, n[1], torch.stack([p, n[0]]), 1.0)) > expected


def test_contrastive_step_moves_target_toward_preference_centroid():
    model = _model()
    history = np.array([3, 9, 12, 5, 22])
    target = torch.tensor([7])
    negatives = np.array([30, 31, 33, 35, 36, 38])
    table = model.item_emb.weight
    centroid = table[torch.as_tensor(history)].mean(0).detach()
    before = float(F.cosine_similarity(table[7].detach(), centroid, dim=0))
    loss = implicit_loss(model, history, target, negatives, 1.0)
    (g,) = torch.autograd.grad(loss, table)
    with torch.no_grad():
        new_t = table[7] - 1.0 * g[7]
        new_c = (table - 1.0 * g)[torch.as_tensor(history)].mean(0)
    assert float(F.cosine_similarity(new_t, centroid, dim=0)) > before
    assert float(F.cosine_similarity(new_t, new_c, dim=0)) > before


def test_ablation_aliases_equal_dvfsr_with_other_weight_zero():
    model = _model(dropout=0.1)
    params = param_copy(model)
    threat = _threat()
    rc = RoundConfig(round=2, epoch=0, seed=5)
    s = build_attack("s_fsr", {"repeats": 3}).craft(model, params, 50, threat, rc)
    s_ref = build_attack("dvfsr", {"repeats": 3, "implicit_weight": 0.0}).craft(model, params, 50, threat, rc)
    c = build_attack("c_fsr", {}).craft(model, params, 50, threat, rc)
    c_ref = build_attack("dvfsr", {"explicit_weight": 0.0}).craft(model, params, 50, threat, rc)
    for n in params:
        torch.testing.assert_close(s.params[n], s_ref.params[n])
        torch.testing.assert_close(c.params[n], c_ref.params[n])
    # the full attack is the sum of the two single views (same substitutions and negatives)
    d = build_attack("dvfsr", {"repeats": 3}).craft(model, params, 50, threat, rc)
    for n in params:
        torch.testing.assert_close(d.params[n], s.params[n] + c.params[n], atol=1e-6, rtol=1e-5)
    # C-FSR only touches item embeddings (the contrastive view lives there)
    assert all(float(v.abs().sum()) == 0 for k, v in c.params.items() if k != "item_emb.weight")


def test_leak_flag_adds_exactly_the_ce_gradient_of_the_unpolluted_sequence():
    # float64: leak - plain cancels two full attack gradients, whose float32 rounding depends on
    # the CPU's kernels; in float64 the difference matches the CE gradient to ~1e-15
    model = _model().double()
    params = param_copy(model)
    threat = _threat()
    rc = RoundConfig(round=0, epoch=0, seed=1)
    plain = build_attack("dvfsr", {}).craft(model, params, 50, threat, rc)
    leak = build_attack("dvfsr", {"leak_substitution_grad": True}).craft(model, params, 50, threat, rc)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
    model.zero_grad()
    seq = as_input(model, [threat.accounts[50]])
    emb = input_embeddings(model, seq).detach()  # as the reference: no gradient into the inputs
    ce = -F.log_softmax(next_logits(model, seq, emb), dim=-1)[0, 7]
    ce.backward()
    for n, p in model.named_parameters():
        assert p.grad.dtype == torch.float64
        torch.testing.assert_close(leak.params[n] - plain.params[n], p.grad, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_fedsgd_step_raises_target_score_for_held_out_histories(name):
    model = _model(name)
    params = param_copy(model)
    threat = _threat()
    rng = np.random.default_rng(1)
    held_out = [rng.choice(np.setdiff1d(np.arange(1, N_ITEMS + 1), [7]), size=8, replace=False)
                for _ in range(30)]
    seqs = as_input(model, held_out)
    model.eval()
    with torch.no_grad():
        before = next_logits(model, seqs)
    upd = build_attack("dvfsr", {"repeats": 2}).craft(model, params, 50, threat, RoundConfig(round=0, epoch=0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n] - 0.5 * upd.params[n])
    model.eval()
    with torch.no_grad():
        after = next_logits(model, seqs)
    lift = (after[:, 7] - after[:, 1:].mean(1)) - (before[:, 7] - before[:, 1:].mean(1))
    assert float(lift.mean()) > 0
    rank_before = (before[:, 1:] > before[:, 7:8]).sum(1).float().mean()
    rank_after = (after[:, 1:] > after[:, 7:8]).sum(1).float().mean()
    assert rank_after < rank_before


def test_repeats_only_matter_with_dropout():
    model = _model(dropout=0.0)
    history = np.array([3, 9, 12, 5, 22])
    negs = np.array([30, 31])
    a, _ = dvfsr_loss(model, history, torch.tensor([7]), negs, repeats=1)
    b, _ = dvfsr_loss(model, history, torch.tensor([7]), negs, repeats=5)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)


def test_parameter_validation():
    with pytest.raises(ValueError):
        DVFSR(explicit_weight=0.0, implicit_weight=0.0)
    with pytest.raises(ValueError):
        DVFSR(temperature=0.0)
    with pytest.raises(ValueError):
        DVFSR(candidates=0)
