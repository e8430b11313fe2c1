"""Shared machinery of the attacks: random streams, losses → updates, next-item logits, profiles.

Every model-poisoning attack in :mod:`attacks` is "a loss on the global model": the attack
writes a scalar loss ``L(model, local_step)`` and :func:`loss_update` turns it into exactly what
a benign client uploads: the gradient ``∇θ L`` at the global parameters for FedSGD, or the
parameter delta after ``rc.local_epochs`` SGD steps of ``rc.local_lr`` on ``L`` (the loss is
re-evaluated at the current local parameters at each step) for FedAvg. All attacks use this one
helper, so a malicious update has the benign layout and the benign optimisation for both
protocols.

Randomness: an attack draws numpy randomness from :func:`attack_rng` (keyed by seed, round,
client id and an attack-specific tag) or :func:`profile_rng` (seed, client id, tag: for
fabricated profiles that stay fixed across rounds), and torch randomness (dropout, estimator
initialisations) from the stream that :class:`attacks.base.Attack.craft` seeds from
``(seed, round, client_id)`` inside :func:`torch.random.fork_rng`. The global RNGs are never
consumed, so an update is the same in the local engine and in a Flower ClientApp.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from clients.update import RoundConfig, num_examples
from fedrec.data.batching import pad_left, to_tensor
from fedrec.errors import ConfigError
from fedrec.models import SequentialRecommender
from fedrec.models.base import load_params

if TYPE_CHECKING:
    from attacks.threat import ThreatModel

Params = dict[str, torch.Tensor]
LossFn = Callable[[SequentialRecommender, int], torch.Tensor]


# ----------------------------------------------------------------------------- randomness


def attack_rng(rc: RoundConfig, client_id: int, tag: int) -> np.random.Generator:
    """Numpy generator for one (seed, round, client, attack tag): fresh draws every round."""
    return np.random.default_rng([int(rc.seed), int(rc.round), int(client_id), int(tag)])


def profile_rng(seed: int, client_id: int, tag: int) -> np.random.Generator:
    """Numpy generator for one (seed, client, attack tag): the same draws in every round.

    Fabricated fake-user profiles come from it, so a fake user keeps its profile for the whole
    run (as in the fake-user baselines of FedRecAttack/PoisonFedDLRS) while the attack object
    stays stateless.
    """
    return np.random.default_rng([int(seed), int(client_id), int(tag), 0x9E37])


# ----------------------------------------------------------------------------- params and updates


def loss_update(
    model: SequentialRecommender,
    global_params: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    rc: RoundConfig,
) -> tuple[Params, float]:
    """Turn an attack loss into an upload: FedSGD gradient or FedAvg delta.

    Parameters
    ----------
    model : SequentialRecommender
        Scratch model; its parameters are overwritten.
    global_params : mapping
        Current global parameters.
    loss_fn : callable
        ``loss_fn(model, local_step) -> scalar`` evaluated with the model's current parameters.
        It may call ``torch.autograd.grad`` on other leaves (input embeddings) freely; only
        the final ``backward`` of its result reaches the parameters' ``.grad``.
    rc : RoundConfig
        Protocol, local epochs and local learning rate.

    Returns
    -------
    update : dict
        Parameter name → gradient (FedSGD) or delta (FedAvg), every parameter present.
    loss : float
        Mean attack loss over the local steps.

    Raises
    ------
    ValueError
        Unknown ``rc.protocol``.
    """
    if rc.protocol not in ("fedsgd", "fedavg"):
        raise ValueError(f"federation.protocol={rc.protocol!r}: expected 'fedsgd' or 'fedavg'")
    load_params(model, global_params)
    steps = 1 if rc.protocol == "fedsgd" else int(rc.local_epochs)
    losses = []
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, step)
        loss.backward()
        losses.append(float(loss.detach()))
        if rc.protocol == "fedsgd":
            grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                     for n, p in model.named_parameters()}
            model.zero_grad(set_to_none=True)
            return grads, losses[0]
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(rc.local_lr * p.grad)
    model.zero_grad(set_to_none=True)
    delta = {n: (p.detach() - global_params[n]).clone() for n, p in model.named_parameters()}
    return delta, float(np.mean(losses))


def account_examples(threat: ThreatModel, client_id: int) -> int:
    """``num_examples`` a model-poisoning attacker reports: that of the account it controls.

    A benign client with the account's history would report ``len(history) - 1``; reporting the
    same keeps the attacker's weight under example-weighted rules plausible.
    """
    acc = threat.accounts.get(int(client_id))
    return num_examples(acc) if acc is not None and len(acc) else 1


def account_history(threat: ThreatModel, client_id: int) -> np.ndarray:
    """The training history of the account ``client_id`` controls.

    Raises
    ------
    ValueError
        The client is not a malicious client of ``threat``.
    """
    acc = threat.accounts.get(int(client_id))
    if acc is None:
        raise ValueError(f"client {client_id} is not a malicious client of this threat model")
    return np.asarray(acc, dtype=np.int64)


def targets_of(threat: ThreatModel) -> np.ndarray:
    """The target items.

    Raises
    ------
    ConfigError
        No targets selected (``attack.targets.select: none``).
    """
    t = np.asarray(threat.targets, dtype=np.int64)
    if len(t) == 0:
        raise ConfigError("attack.targets.select: an attack needs at least one target item")
    return t


def require_popularity(threat: ThreatModel, attack: str) -> np.ndarray:
    """Training item counts the attacker knows.

    Raises
    ------
    ConfigError
        ``attack.knowledge.popularity`` is off.
    """
    if threat.popularity is None:
        raise ConfigError(f"attack.knowledge.popularity: attack {attack!r} needs item popularity "
                          "(set attack.knowledge.popularity: true)")
    return np.asarray(threat.popularity)


def require_public(threat: ThreatModel, attack: str) -> list[np.ndarray]:
    """The attacker's public share of other users' interactions.

    Raises
    ------
    ConfigError
        ``attack.knowledge.public_fraction`` is 0.
    """
    if threat.public is None:
        raise ConfigError(f"attack.knowledge.public_fraction: attack {attack!r} needs public "
                          "interactions (set attack.knowledge.public_fraction > 0)")
    return threat.public


# ----------------------------------------------------------------------------- scoring


def history_window(model: SequentialRecommender) -> int:
    """How many history items the model reads when scoring the next item.

    BERT4Rec appends its mask token, so it reads ``max_len - 1`` history items.
    """
    return model.max_len - 1 if getattr(model, "mask_token", None) is not None else model.max_len


def as_input(model: SequentialRecommender, histories: Iterable[np.ndarray]) -> torch.Tensor:
    """Left-padded id matrix of histories truncated to :func:`history_window`."""
    return to_tensor(pad_left(list(histories), history_window(model)))


def next_logits(
    model: SequentialRecommender,
    seqs: torch.Tensor,
    input_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-item logits ``[B, n_items + 1]`` after left-padded histories ``seqs`` ``[B, L]``.

    Column 0 (padding) is ``-inf``. ``input_embeddings`` ``[B, L, d]`` replaces the item
    embedding lookup of the histories (the model's ``encode`` hook), so gradients w.r.t. the
    input are available. For BERT4Rec the mask token is appended (with its own embedding)
    and scored, exactly as :meth:`~fedrec.models.bert4rec.BERT4Rec.last_hidden` does.
    """
    if input_embeddings is None:
        h = model.last_hidden(seqs)
    else:
        mask_token = getattr(model, "mask_token", None)
        inputs, emb = seqs, input_embeddings
        if mask_token is not None:
            keep = model.max_len - 1
            inputs, emb = inputs[:, inputs.shape[1] - min(keep, inputs.shape[1]):], emb[:, emb.shape[1] - min(keep, emb.shape[1]):]
            col = torch.full((inputs.shape[0], 1), mask_token, dtype=inputs.dtype)
            inputs = torch.cat([inputs, col], dim=1)
            mask_emb = model.item_emb.weight[mask_token].expand(emb.shape[0], 1, -1)
            emb = torch.cat([emb, mask_emb], dim=1)
        h = model.encode(inputs, emb)[:, -1]
    logits = h @ model.item_embeddings().T
    bias = model.output_bias()
    if bias is not None:
        logits = logits + bias
    pad = torch.full_like(logits[:, :1], float("-inf"))
    return torch.cat([pad, logits[:, 1:]], dim=1)


def promotion_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``−log σ(z_t)`` averaged over rows and targets (BCE with label 1 on each target)."""
    return F.softplus(-logits[:, targets]).mean()


def input_embeddings(model: SequentialRecommender, seqs: torch.Tensor) -> torch.Tensor:
    """The item-embedding lookup of ``seqs`` (padding rows are the zero padding embedding)."""
    return F.embedding(seqs, model.item_emb.weight, padding_idx=0)


# ----------------------------------------------------------------------------- fabricated profiles


def sample_lengths(threat: ThreatModel, rng: np.random.Generator, n: int,
                   items_limit: int | None, max_len: int) -> np.ndarray:
    """Profile lengths: ``items_limit`` if given, else draws from the benign length distribution.

    Lengths are clipped to ``[2, max_len + 1]`` (a training sequence of length ``L`` gives
    ``L - 1`` next-item examples; the model reads at most ``max_len`` inputs).

    Raises
    ------
    ConfigError
        Neither ``items_limit`` nor the benign lengths (``threat.lengths``) are available.
    """
    if items_limit is not None:
        lengths = np.full(n, int(items_limit), dtype=np.int64)
    else:
        if threat.lengths is None or len(threat.lengths) == 0:
            raise ConfigError("attack.params.items_limit: needed when the benign length "
                              "distribution is unknown")
        lengths = rng.choice(np.asarray(threat.lengths, dtype=np.int64), size=n)
    return np.clip(lengths, 2, max_len + 1)


def sample_items_outside(rng: np.random.Generator, n_items: int, excluded: Iterable[int],
                         size: int, replace: bool = True) -> np.ndarray:
    """``size`` items uniform over ``1..n_items`` minus ``excluded``.

    Raises
    ------
    ValueError
        Nothing (or, without replacement, too little) left to sample.
    """
    mask = np.ones(n_items + 1, dtype=bool)
    mask[0] = False
    ex = np.fromiter((int(i) for i in excluded), dtype=np.int64)
    mask[ex[(ex >= 0) & (ex <= n_items)]] = False
    pool = np.flatnonzero(mask)
    if len(pool) == 0 or (not replace and len(pool) < size):
        raise ValueError(f"cannot sample {size} items outside {len(ex)} excluded of {n_items}")
    return rng.choice(pool, size=size, replace=replace).astype(np.int64)


def random_histories(rng: np.random.Generator, threat: ThreatModel, n_users: int, n_items: int,
                     targets: np.ndarray, window: int, seq_len: int | None) -> list[np.ndarray]:
    """``n_users`` random non-target histories (lengths: ``seq_len`` or benign draws)."""
    lengths = sample_lengths(threat, rng, n_users, seq_len, window)
    out = []
    for n in lengths:
        n = int(min(n, window, n_items - len(targets)))
        out.append(sample_items_outside(rng, n_items, targets, max(1, n), replace=False))
    return out


def place_target(prefix: np.ndarray, targets: np.ndarray, position: str,
                 rng: np.random.Generator) -> np.ndarray:
    """Insert the targets into a fabricated prefix: at the end (``"last"``) or at random slots.

    Raises
    ------
    ValueError
        Unknown ``position``.
    """
    if position == "last":
        return np.concatenate([prefix, targets]).astype(np.int64)
    if position == "random":
        out = list(prefix)
        for t in targets:
            out.insert(int(rng.integers(0, len(out) + 1)), int(t))
        return np.asarray(out, dtype=np.int64)
    raise ValueError(f"target_position={position!r}: expected 'last' or 'random'")


# ----------------------------------------------------------------------------- upload shaping


def restrict_item_rows(update: Params, item_param_names: Iterable[str], rows: np.ndarray) -> Params:
    """Zero every row of the item-indexed parameters except ``rows`` (an upload's item set)."""
    out = dict(update)
    keep = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    for name in item_param_names:
        if name not in out:
            continue
        v = out[name]
        mask = torch.zeros(v.shape[0], dtype=torch.bool)
        mask[keep[keep < v.shape[0]]] = True
        shape = (-1,) + (1,) * (v.dim() - 1)
        out[name] = v * mask.view(shape).to(v.dtype)
    return out


def clip_rows(t: torch.Tensor, limit: float) -> torch.Tensor:
    """Scale each row of ``t`` to L2 norm ≤ ``limit`` (1-D tensors: each entry to |x| ≤ limit)."""
    norms = t.reshape(t.shape[0], -1).norm(dim=1) if t.dim() > 1 else t.abs()
    factor = (limit / norms.clamp_min(1e-12)).clamp(max=1.0)
    return t * factor.view((-1,) + (1,) * (t.dim() - 1))


def clip_total(update: Mapping[str, torch.Tensor], limit: float,
               names: Iterable[str] | None = None) -> Params:
    """Scale the tensors ``names`` (default all) jointly to L2 norm ≤ ``limit``."""
    out = dict(update)
    names = list(out) if names is None else [n for n in names if n in out]
    if not names:
        return out
    norm = torch.sqrt(sum((out[n].double() ** 2).sum() for n in names))
    if norm > limit:
        f = float(limit / norm)
        for n in names:
            out[n] = out[n] * f
    return out
