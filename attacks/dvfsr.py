"""DV-FSR: dual-view targeted model poisoning of federated sequential recommendation.

Qin, Luo, Cheng, Mao & Lei, "DV-FSR: A Dual-View Target Attack Framework for Federated
Sequential Recommendation", arXiv 2409.07500 (2024; v2 withdrawn by the authors). The paper
body is not available; the method here follows the authors' public code (read, not copied),
github.com/USTCAGI/DV-FSR (the repository named in the paper; qqt-code/DV-FSR is the first
author's identical copy), attack ``method_DV-FSR`` of ``SeqAttackClient_method1_2_3``, with
that code's bugs left out:

**Explicit view** (gradient-guided item substitution, after Yue et al., "Defending
Substitution-Based Profile Pollution Attacks on Sequential Recommenders", RecSys 2022):
the malicious client takes the history of the account it controls (the last ``max_len`` items),

1. computes the full-softmax cross-entropy of the target at the last position and its gradient
   ``g`` w.r.t. the input item embeddings (model in train mode, as the reference: with dropout
   the importance ranking varies between repeats);
2. importance of a position = ``‖g_pos‖₂`` (padding excluded); the top ``positions`` positions are
   substituted greedily, most important first;
3. candidates for a position holding item ``e`` are the items ``j`` with
   ``cos(e_j, e) ≥ min_similarity``, ranked by ``cos(e_j, e − sign(g_pos))``; the top
   ``candidates`` are tried (one batched forward, eval mode) and the one giving the target the
   largest softmax probability at the last position is kept — *if* it beats the current
   sequence (the unchanged item competes too, so a substitution never lowers the target's
   probability; the reference keeps the best candidate even when it is worse). As in Yue et
   al., the target cannot be placed right after an occurrence of the target (the reference's
   ``+1e-9`` version of that rule is a no-op);

then the **promotion loss** ``L_exp = −log σ(z_target)`` at the last position of the polluted
sequence (eval mode), averaged over ``repeats`` substitutions.

**Implicit view** (contrastive): InfoNCE with anchor = target item embedding, positive = mean
embedding of the account's whole history (its "preference"), negatives = ``n_negatives`` items
drawn uniformly outside the history and the targets, cosine logits divided by ``temperature``
(reference: 1), label = the positive (the reference's C-FSR variant had the label on the first
negative; that bug is not reproduced).

**Combination**: ``L = explicit_weight · L_exp + implicit_weight · L_imp`` (reference 1:1), and the
upload is ``∇θ L`` (FedSGD) or the delta of local SGD on ``L`` (FedAvg; the substitution is redone
at each local step). The substitution only uses ``torch.autograd.grad`` on the input embeddings,
so — unlike the reference, which never zeroes the parameter gradients of its last substitution
pass — no extra ``∇θ CE(target | original sequence)`` is uploaded. That hidden term roughly
doubles the explicit promotion; it can be switched on for reproduction studies with
``leak_substitution_grad: true`` (the full-softmax CE of the target after the *unpolluted*
sequence, train mode, input item embeddings detached as in the reference's substitution pass,
weight 1, added once). On Steam it is what makes the reference effective: see the Attacks
section of ``docs/benchmarks.md``.

Single-view ablations are configurations of this class (registry aliases): ``s_fsr`` =
explicit only (``implicit_weight: 0``), ``c_fsr`` = implicit only (``explicit_weight: 0``). The
reference's ``method_C-FSR`` also kept a BCE term on the *unpolluted* sequence; that is
``dvfsr`` with ``positions: 0``.

Sequential models: SASRec and GRU4Rec score the target from the last hidden state of the
history; BERT4Rec appends its mask token and scores at the mask (the position evaluation uses).
With several targets, losses and probabilities are averaged over the targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from attacks.base import Attack
from attacks.common import (
    account_examples,
    account_history,
    as_input,
    attack_rng,
    input_embeddings,
    loss_update,
    next_logits,
    promotion_loss,
    sample_items_outside,
    targets_of,
)
from clients.update import RoundConfig, Update
from fedrec.models import SequentialRecommender

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

#: Tag of DV-FSR's random stream (negatives of the implicit view).
STREAM_TAG = 0xD7F5


def has_active_dropout(model: SequentialRecommender) -> bool:
    """Whether any dropout module of ``model`` has ``p > 0`` (then train-mode passes vary)."""
    return any("Dropout" in type(m).__name__ and float(getattr(m, "p", 0.0)) > 0 for m in model.modules())


def target_probability(model: SequentialRecommender, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean softmax probability of the targets as the next item after each row of ``seqs``."""
    return F.softmax(next_logits(model, seqs), dim=-1)[:, targets].mean(dim=1)


def importance_scores(model: SequentialRecommender, seq: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position importance of a history for promoting the targets.

    Parameters
    ----------
    model : SequentialRecommender
        Model in the mode the caller wants (the reference uses train mode).
    seq : Tensor
        One left-padded history ``[1, L]``.
    targets : Tensor
        Target ids.

    Returns
    -------
    scores : Tensor
        ``‖∂CE/∂e_pos‖₂`` per position ``[L]`` (0 at padding), CE = mean over the targets of the
        full-softmax cross-entropy at the last position.
    grad : Tensor
        ``∂CE/∂e`` ``[L, d]``.
    emb : Tensor
        The input embeddings ``[L, d]`` (detached).
    """
    emb = input_embeddings(model, seq).detach().requires_grad_(True)
    logp = F.log_softmax(next_logits(model, seq, emb), dim=-1)
    ce = -logp[0, targets].mean()
    (g,) = torch.autograd.grad(ce, emb)
    scores = g[0].norm(dim=-1) * (seq[0] > 0).to(g.dtype)
    return scores.detach(), g[0].detach(), emb[0].detach()


def substitute(
    model: SequentialRecommender,
    seq: torch.Tensor,
    targets: torch.Tensor,
    positions: int = 1,
    min_similarity: float = 0.5,
    candidates: int = 10,
    importance_in_train_mode: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DV-FSR's explicit view: gradient-guided item substitution promoting ``targets``.

    Parameters
    ----------
    model : SequentialRecommender
        Model at the current parameters (its mode is changed: train for the importance pass if
        ``importance_in_train_mode``, eval afterwards).
    seq : Tensor
        One left-padded history ``[1, L]``.
    targets : Tensor
        Target item ids.
    positions : int
        How many positions (most important first) may be substituted.
    min_similarity : float
        Candidates must have cosine similarity ≥ this with the original item's embedding.
    candidates : int
        Candidates tried per position.
    importance_in_train_mode : bool
        Compute the importance gradient with dropout active (the reference's behaviour).

    Returns
    -------
    polluted : Tensor
        The polluted history ``[1, L]``; at most ``positions`` items differ from ``seq``.
    info : dict
        ``prob_before``/``prob_after`` (target probability) and ``changed`` (positions changed).
    """
    model.train(importance_in_train_mode)
    scores, grad, emb = importance_scores(model, seq, targets)
    model.eval()
    n_items = model.n_items
    table = model.item_emb.weight.detach()[1: n_items + 1]  # candidate items 1..n_items
    table_n = F.normalize(table, dim=-1)
    target_set = set(int(t) for t in targets)
    real = int((seq[0] > 0).sum())
    ranked = scores.masked_fill(seq[0] == 0, float("-inf"))
    order = torch.argsort(-ranked, stable=True)[: min(int(positions), real)]
    with torch.no_grad():
        best = seq.clone()
        best_p = float(target_probability(model, best, targets)[0])
        before = best_p
        for pos in order.tolist():
            e, g = emb[pos], grad[pos]
            sim = table_n @ F.normalize(e, dim=0)
            rank = table_n @ F.normalize(e - torch.sign(g), dim=0)
            allowed = sim >= min_similarity
            allowed[int(best[0, pos]) - 1] = False  # the incumbent competes separately
            if pos > 0 and int(best[0, pos - 1]) in target_set:
                for t in target_set:
                    allowed[t - 1] = False
            n_ok = int(allowed.sum())
            if n_ok == 0:
                continue
            rank = rank.masked_fill(~allowed, float("-inf"))
            top = torch.topk(rank, min(int(candidates), n_ok)).indices + 1
            trial = best.repeat(len(top), 1)
            trial[:, pos] = top
            probs = target_probability(model, trial, targets)
            j = int(torch.argmax(probs))
            if float(probs[j]) > best_p:
                best, best_p = trial[j: j + 1].clone(), float(probs[j])
    changed = int((best != seq).sum())
    return best, {"prob_before": before, "prob_after": best_p, "changed": float(changed)}


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE with cosine logits: ``−log softmax([cos(a,p), cos(a,n_1), …] / τ)[0]``.

    Parameters
    ----------
    anchor : Tensor
        Anchors ``[T, d]`` (the target embeddings).
    positive : Tensor
        Positive ``[d]`` (the preference centroid), shared by all anchors.
    negatives : Tensor
        Negatives ``[N, d]``, shared by all anchors.
    temperature : float
        τ > 0.

    Returns
    -------
    Tensor
        Mean loss over anchors.
    """
    pos = F.cosine_similarity(anchor, positive.unsqueeze(0), dim=-1)  # [T]
    neg = F.cosine_similarity(anchor.unsqueeze(1), negatives.unsqueeze(0), dim=-1)  # [T, N]
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels)


def implicit_loss(model: SequentialRecommender, history: np.ndarray, targets: torch.Tensor,
                  negatives: np.ndarray, temperature: float) -> torch.Tensor:
    """DV-FSR's implicit view on the model's item embeddings (see :func:`contrastive_loss`)."""
    table = model.item_emb.weight
    centroid = table[torch.as_tensor(np.asarray(history, dtype=np.int64))].mean(dim=0)
    return contrastive_loss(table[targets], centroid, table[torch.as_tensor(negatives)], temperature)


def dvfsr_loss(
    model: SequentialRecommender,
    history: np.ndarray,
    targets: torch.Tensor,
    negatives: np.ndarray,
    positions: int = 1,
    min_similarity: float = 0.5,
    candidates: int = 10,
    repeats: int = 10,
    temperature: float = 1.0,
    explicit_weight: float = 1.0,
    implicit_weight: float = 1.0,
    leak_substitution_grad: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DV-FSR objective ``w_exp · L_exp + w_imp · L_imp`` at the model's current parameters.

    ``L_exp`` is the mean over ``repeats`` substitutions of ``−log σ(z_target)`` on the polluted
    history; the substitution is computed once when the model has no active dropout (repeats
    would be identical). Returns the loss and diagnostics (target probability before/after the
    substitution of the first repeat, positions changed).
    """
    seq = as_input(model, [history])
    info: dict[str, float] = {}
    loss = torch.zeros(())
    if explicit_weight > 0:
        n_sub = int(repeats) if has_active_dropout(model) else 1
        polluted = []
        for r in range(n_sub):
            if positions > 0:
                p, sub_info = substitute(model, seq, targets, positions, min_similarity, candidates)
                if r == 0:
                    info.update(sub_info)
            else:
                p = seq
            polluted.append(p)
        model.eval()
        l_exp = promotion_loss(next_logits(model, torch.cat(polluted)), targets)
        info["loss_explicit"] = float(l_exp.detach())
        loss = loss + explicit_weight * l_exp
    if implicit_weight > 0:
        l_imp = implicit_loss(model, history, targets, negatives, temperature)
        info["loss_implicit"] = float(l_imp.detach())
        loss = loss + implicit_weight * l_imp
    if leak_substitution_grad:
        model.train()  # the reference's substitution pass: train mode, input embeddings detached
        emb = input_embeddings(model, seq).detach()
        ce = -F.log_softmax(next_logits(model, seq, emb), dim=-1)[0, targets].mean()
        model.eval()
        loss = loss + ce
    return loss, info


class DVFSR(Attack):
    """DV-FSR (see module docstring).

    Parameters
    ----------
    positions : int
        Positions substituted in the explicit view (README command: 1; 0 = no substitution).
    min_similarity : float
        Cosine threshold for substitution candidates (reference 0.5).
    candidates : int
        Candidates tried per position (reference 10).
    repeats : int
        Substitutions averaged in ``L_exp`` (reference 10; they differ only through dropout).
    n_negatives : int
        Negatives of the implicit view (reference 100).
    temperature : float
        InfoNCE temperature (reference 1.0).
    explicit_weight, implicit_weight : float
        Weights of the two views (reference 1, 1).
    leak_substitution_grad : bool
        Add the reference code's accidental extra gradient (see module docstring).
    scale : float
        Multiplies the update.
    """

    name = "dvfsr"

    def __init__(self, positions: int = 1, min_similarity: float = 0.5, candidates: int = 10,
                 repeats: int = 10, n_negatives: int = 100, temperature: float = 1.0,
                 explicit_weight: float = 1.0, implicit_weight: float = 1.0,
                 leak_substitution_grad: bool = False, scale: float = 1.0) -> None:
        super().__init__(scale)
        if int(positions) < 0:
            raise ValueError(f"positions={positions}: expected >= 0")
        if not -1.0 <= float(min_similarity) <= 1.0:
            raise ValueError(f"min_similarity={min_similarity}: expected a cosine in [-1, 1]")
        for key, val in (("candidates", candidates), ("repeats", repeats), ("n_negatives", n_negatives)):
            if int(val) < 1:
                raise ValueError(f"{key}={val}: expected >= 1")
        if float(temperature) <= 0:
            raise ValueError(f"temperature={temperature}: expected > 0")
        if float(explicit_weight) < 0 or float(implicit_weight) < 0:
            raise ValueError("explicit_weight/implicit_weight: expected >= 0")
        if float(explicit_weight) == 0 and float(implicit_weight) == 0 and not leak_substitution_grad:
            raise ValueError("explicit_weight/implicit_weight: at least one view must have weight > 0")
        self.positions = int(positions)
        self.min_similarity = float(min_similarity)
        self.candidates = int(candidates)
        self.repeats = int(repeats)
        self.n_negatives = int(n_negatives)
        self.temperature = float(temperature)
        self.explicit_weight = float(explicit_weight)
        self.implicit_weight = float(implicit_weight)
        self.leak_substitution_grad = bool(leak_substitution_grad)

    def loss_terms(self) -> dict:
        """Keyword arguments of :func:`dvfsr_loss` this configuration uses."""
        return {"positions": self.positions, "min_similarity": self.min_similarity,
                "candidates": self.candidates, "repeats": self.repeats,
                "temperature": self.temperature, "explicit_weight": self.explicit_weight,
                "implicit_weight": self.implicit_weight,
                "leak_substitution_grad": self.leak_substitution_grad}

    def _craft(self, model: SequentialRecommender, global_params: Mapping[str, torch.Tensor],
               client_id: int, threat: ThreatModel, rc: RoundConfig) -> Update:
        history = account_history(threat, client_id)
        targets_np = targets_of(threat)
        targets = torch.as_tensor(targets_np)
        rng = attack_rng(rc, client_id, STREAM_TAG)
        negatives = sample_items_outside(rng, model.n_items, np.concatenate([history, targets_np]),
                                         self.n_negatives)
        info: dict[str, float] = {}

        def loss_fn(m: SequentialRecommender, step: int) -> torch.Tensor:
            loss, extra = dvfsr_loss(m, history, targets, negatives, **self.loss_terms())
            if step == 0:
                info.update(extra)
            return loss

        params, loss = loss_update(model, global_params, loss_fn, rc)
        return Update(params, account_examples(threat, client_id), {"loss": loss, **info})


__all__ = ["DVFSR", "contrastive_loss", "dvfsr_loss", "implicit_loss", "importance_scores",
           "substitute", "target_probability"]
