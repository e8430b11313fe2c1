"""Scenario data for SASS (:mod:`fedrec.baselines.sass`) on top of :mod:`fedrec.data.domains`.

The scenarios are the overlapping genre-group domains of :func:`fedrec.data.domains.load_domains`
(``overlapping: true``: an item with genres in several groups lives in every one of them, so
users *and* items are shared across scenarios). This module only re-indexes them for a
two-tower model: one global item index over all scenarios (the shared embedding), each
scenario's item set (its full-ranking candidates), positive train pairs, held-out items, and:

* **Unlabelled samples** [INF]: the same domains built with every rating (``min_rating: None``)
  give each user's exposures; those that are not a labelled positive (train, valid or test) of
  that user in that scenario are the scenario's unlabelled samples. ML-100K has no exposure
  log, so "rated but below ``min_rating``" stands in for the paper's unlabelled space.
* **Behaviour matrices** [INF]: per scenario, the row-normalised user x item matrix of train
  positives (+ unlabelled samples) and its transpose, which the towers use to add the mean
  embedding of an entity's scenario behaviour to its own embedding.
* **Contrastive pools**: for each ordered pair of scenarios, the users active in both (labelled or
  unlabelled) and the items living in both.
* **Cross-scenario time cut** (the rule of :mod:`fedrec.data.domains`, step 7, with every
  scenario a target of the others). One model is trained for all scenarios, and a user's
  embedding absorbs its train pairs of every scenario, so a training input of user ``u`` must be
  **strictly earlier** than ``u``'s validation item in every scenario where ``u`` has one (ties
  excluded); the test items are later still. Concretely: a train positive of scenario ``s`` is
  kept only if it is earlier than ``u``'s validation item of every *other* scenario (inside
  ``s`` the chronological split already puts it before); an unlabelled sample of ``s`` only if
  it is earlier than ``u``'s validation item of *every* scenario, ``s`` included. Without the
  cut, ML-100K's overlapping scenarios put 2181 held-out (valid/test) items of one scenario
  among the train positives of another (the same rating, counted in both) and 17% of the train
  positives after another scenario's validation item. The ranking exclusion (``history``) keeps
  every train positive of the scenario: those are all before its held-out items.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.data.domains import DomainSplit, domain_config, load_domains


@dataclass
class ScenarioData:
    """Multi-scenario retrieval data with global user and item indices (0-based).

    Attributes
    ----------
    name : str
        Dataset name.
    scenarios : tuple of str
        Scenario names (metric-safe).
    n_users, n_items : int
        Global counts.
    items : list of numpy.ndarray
        Scenario -> global ids of its items (ranking candidates).
    train : list of tuple
        Scenario -> ``(users, items)`` positive train pairs (after the cross-scenario time cut).
    valid, test : list of numpy.ndarray
        Scenario -> ``[n_users]`` held-out global item (-1: none).
    history : list of list
        Scenario -> per user the global ids of train positives (excluded from ranking; not cut).
    unlabeled : list of tuple
        Scenario -> ``(users, items)`` unlabelled samples (after the cross-scenario time cut).
    pools : dict
        ``(s1, s2)`` -> ``(users, items)`` active in both scenarios.
    """

    name: str
    scenarios: tuple[str, ...]
    n_users: int
    n_items: int
    items: list[np.ndarray]
    train: list[tuple[np.ndarray, np.ndarray]]
    valid: list[np.ndarray]
    test: list[np.ndarray]
    history: list[list[np.ndarray]]
    unlabeled: list[tuple[np.ndarray, np.ndarray]]
    pools: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_scenarios(self) -> int:
        """Number of scenarios."""
        return len(self.scenarios)

    def behaviour(self, unlabeled: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scenario ``(user->item, item->user)`` row-normalised sparse matrices of train
        positives (and unlabelled samples)."""
        out = []
        for s in range(self.n_scenarios):
            u, i = self.train[s]
            if unlabeled:
                u = np.concatenate([u, self.unlabeled[s][0]])
                i = np.concatenate([i, self.unlabeled[s][1]])
            out.append((_row_normalised(u, i, self.n_users, self.n_items),
                        _row_normalised(i, u, self.n_items, self.n_users)))
        return out

    def stats(self) -> dict[str, float]:
        """Users with a positive, items, train pairs, evaluated users and unlabelled samples per
        scenario; users/items shared by at least two scenarios."""
        out: dict[str, float] = {"users": float(self.n_users), "items": float(self.n_items)}
        user_in = np.zeros((self.n_scenarios, self.n_users), dtype=bool)
        item_in = np.zeros((self.n_scenarios, self.n_items), dtype=bool)
        for s, name in enumerate(self.scenarios):
            u, _ = self.train[s]
            user_in[s, u] = True
            user_in[s, self.test[s] >= 0] = True
            item_in[s, self.items[s]] = True
            out[f"{name}/users"] = float(user_in[s].sum())
            out[f"{name}/items"] = float(len(self.items[s]))
            out[f"{name}/train_pairs"] = float(len(u))
            out[f"{name}/eval_users"] = float((self.test[s] >= 0).sum())
            out[f"{name}/unlabeled"] = float(len(self.unlabeled[s][0]))
        out["shared_users"] = float((user_in.sum(0) >= 2).sum())
        out["shared_items"] = float((item_in.sum(0) >= 2).sum())
        return out


def _row_normalised(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> torch.Tensor:
    """Sparse ``[n_rows, n_cols]`` with ``1/deg(row)`` at each distinct ``(row, col)``."""
    pairs = np.unique(np.stack([rows, cols]), axis=1) if len(rows) else np.zeros((2, 0), np.int64)
    deg = np.bincount(pairs[0], minlength=n_rows).astype(np.float32)
    vals = 1.0 / deg[pairs[0]] if pairs.shape[1] else np.zeros(0, np.float32)
    return torch.sparse_coo_tensor(torch.as_tensor(pairs),
                                   torch.as_tensor(vals, dtype=torch.float32),
                                   (n_rows, n_cols), check_invariants=True).coalesce()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def from_domains(split: DomainSplit, exposures: DomainSplit | None = None) -> ScenarioData:
    """Re-index an overlapping :class:`DomainSplit` (and, optionally, the same domains built
    with every rating, for the unlabelled samples) into :class:`ScenarioData`."""
    doms = split.domains
    all_ids = np.unique(np.concatenate([split.item_ids[d][1:] for d in doms]))
    to_global = {d: np.concatenate([[-1], np.searchsorted(all_ids, split.item_ids[d][1:])])
                 for d in doms}
    n_users = split.n_users
    items, train, valid, test, history, unlabeled = [], [], [], [], [], []
    uid_pos = {int(u): k for k, u in enumerate(split.user_ids)}
    # cross-scenario time cut (module docstring): per scenario, the earliest validation time of
    # the user's *other* scenarios (positives) and of *all* its scenarios (unlabelled)
    valid_cut = {d: split.cutoff(d, "valid") for d in doms}
    every = np.minimum.reduce([valid_cut[d] for d in doms])
    for d in doms:
        g = to_global[d]
        items.append(g[1:].copy())
        hist = [g[t] for t in split.train[d]]
        history.append(hist)
        others = np.minimum.reduce([valid_cut[o] for o in doms if o != d])
        kept = [g[t] for t in split.before(d, others)]
        users = np.repeat(np.arange(n_users), [len(h) for h in kept])
        train.append((users, np.concatenate(kept) if kept else np.zeros(0, np.int64)))
        valid.append(np.where(split.valid[d] > 0, g[split.valid[d]], -1))
        test.append(np.where(split.test[d] > 0, g[split.test[d]], -1))
        uu, ii = [], []
        if exposures is not None:
            eg = np.full(len(exposures.item_ids[d]), -1, dtype=np.int64)
            pos = np.searchsorted(all_ids, exposures.item_ids[d][1:])
            known = (pos < len(all_ids)) & (all_ids[np.minimum(pos, len(all_ids) - 1)]
                                            == exposures.item_ids[d][1:])
            eg[1:][known] = pos[known]
            for k, orig in enumerate(exposures.user_ids):
                u = uid_pos.get(int(orig))
                if u is None:
                    continue
                seen = np.concatenate([exposures.train[d][k], [exposures.valid[d][k],
                                                               exposures.test[d][k]]])
                when = np.concatenate([exposures.train_time[d][k], [exposures.valid_time[d][k],
                                                                    exposures.test_time[d][k]]])
                cand = eg[seen[(seen > 0) & (when < every[u])]]
                labelled = set(hist[u].tolist()) | {int(valid[-1][u]), int(test[-1][u])}
                keep = [c for c in np.unique(cand) if c >= 0 and int(c) not in labelled]
                uu += [u] * len(keep)
                ii += keep
        unlabeled.append((np.asarray(uu, dtype=np.int64), np.asarray(ii, dtype=np.int64)))
    data = ScenarioData(split.name, tuple(_safe(d) for d in doms), n_users, len(all_ids), items,
                        train, valid, test, history, unlabeled)
    data.pools = contrastive_pools(data)
    return data


def contrastive_pools(data: ScenarioData) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """For each pair ``s1 < s2``: users active in both (train positive, held-out item or
    unlabelled sample) and items living in both."""
    active = np.zeros((data.n_scenarios, data.n_users), dtype=bool)
    member = np.zeros((data.n_scenarios, data.n_items), dtype=bool)
    for s in range(data.n_scenarios):
        active[s, data.train[s][0]] = True
        active[s, data.unlabeled[s][0]] = True
        active[s, data.test[s] >= 0] = True
        member[s, data.items[s]] = True
    return {(a, b): (np.flatnonzero(active[a] & active[b]), np.flatnonzero(member[a] & member[b]))
            for a, b in itertools.combinations(range(data.n_scenarios), 2)}


def load_scenarios(domains: dict[str, Any] | None, data_root: str | Path | None = None,
                   unlabeled: bool = True) -> ScenarioData:
    """Build the SASS scenarios from a ``domains`` mapping (``overlapping`` defaults to true
    here; errors name ``model.params.domains.<key>``)."""
    raw = {"overlapping": True, **dict(domains or {})}
    if raw.get("dataset", "synthetic") != "synthetic":
        raw.setdefault("min_rating", 4)
    cfg = domain_config(raw, prefix="model.params.domains.")
    split = load_domains(cfg, data_root)
    exposures = None
    if unlabeled and cfg.min_rating is not None:
        exposures = load_domains(cfg.model_copy(update={"min_rating": None}), data_root)
    return from_domains(split, exposures)
