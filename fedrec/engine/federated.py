"""Federated training with the in-process (local) engine.

One step = one server round. The round's benign clients are computed as **one batched
computation**: for a linear rule (sum/mean) under FedSGD the combined gradient
``Σ c_i ∇L_i`` comes from a single forward/backward (:func:`clients.update.combined_fedsgd_gradient`);
for any other rule, or FedAvg, per-client updates come from ``torch.func.vmap``
(:func:`clients.update.batched_updates`). Malicious clients craft their updates with the attack.
With ``federation.item_updates: sparse`` the per-client item tables are the rows each client
touched (:class:`fedrec.rowsparse.RowSparse`; attackers' dense tables are converted when
they are stacked), so a round's memory follows touched rows, not clients x catalog.
The server side (:class:`strategies.server.ServerAggregator`: validation, defense, server
optimizer) is the same object the Flower strategy uses; what both engines share lives in
:mod:`fedrec.engine.federation`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clients.update import (
    RoundConfig,
    batched_updates,
    combined_fedsgd_gradient,
    num_examples,
    sparse_item_support,
)
from fedrec.engine.context import RunContext
from fedrec.engine.federation import FederatedTrainerBase, Federation, build_aggregator
from fedrec.engine.loop import Trainer
from fedrec.errors import ConfigError
from fedrec.rowsparse import RowSparse
from strategies.server import RoundReport, ServerAggregator
from strategies.validation import finite_rows, nonfinite_keys

Params = dict[str, torch.Tensor]
Stacked = dict[str, torch.Tensor | RowSparse]


def place_clients(parts: list[tuple[Stacked, np.ndarray]], n: int) -> Stacked:
    """Merge stacks of disjoint client groups into one stack of ``n`` clients.

    Parameters
    ----------
    parts : list of (stack, positions)
        Each group's stacked updates and the position (``int64[k]``) of each of its rows in
        the merged stack; the positions of all groups together are ``0..n-1``.
    n : int
        Clients in the merged stack.

    Returns
    -------
    dict
        ``name -> Tensor[n, ...]`` (or :class:`RowSparse` where the groups hold one).
    """
    out: Stacked = {}
    for name in parts[0][0]:
        values = [p[0][name] for p in parts]
        if any(isinstance(v, RowSparse) for v in values):
            sparse = [v if isinstance(v, RowSparse) else RowSparse.from_dense(v) for v in values]
            index = torch.empty(n, dtype=torch.long)
            offset = 0
            for v, (_, pos) in zip(sparse, parts, strict=True):
                index[torch.from_numpy(pos)] = torch.arange(offset, offset + v.n)
                offset += v.n
            out[name] = RowSparse.concat(sparse).select(index)
            continue
        full = torch.empty((n, *values[0].shape[1:]), dtype=values[0].dtype)
        for v, (_, pos) in zip(values, parts, strict=True):
            full.index_copy_(0, torch.from_numpy(pos), v)
        out[name] = full
    return out


def malicious_updates(fed: Federation, params: Params, ids: np.ndarray, rc: RoundConfig,
                      sparse_items: bool = False
                      ) -> tuple[Stacked | None, list[int], list[float]]:
    """The attackers' updates of a round, crafted one by one and stacked in ``ids`` order.

    Shared by the local engine and the Flower engine's partition nodes.

    Parameters
    ----------
    fed : Federation
        The experiment (its model, attack and threat model).
    params : dict
        Global parameters of the round.
    ids : numpy.ndarray
        Malicious client ids.
    rc : RoundConfig
        The round's client config.
    sparse_items : bool
        Keep each item table as its touched rows (:class:`RowSparse`;
        ``federation.item_updates: sparse``).

    Returns
    -------
    stacked : dict or None
        ``name -> Tensor[k, ...]`` (item tables a RowSparse with ``sparse_items``); None when
        ``ids`` is empty.
    counts : list of int
        Each attacker's claimed example count.
    losses : list of float
        Each attacker's reported loss (0.0 when the attack reports none, as a Flower
        single-client reply does).
    """
    if len(ids) == 0:
        return None, [], []
    items = set(fed.ctx.model.item_param_names) if sparse_items else set()
    ups = []
    for c in ids:
        u = fed.attack.craft(fed.ctx.model, params, int(c), fed.threat, rc)
        # attacks craft dense tables; with sparse items keep only each one's touched rows
        # (converted as crafted, so at most one attacker's dense table is alive at a time)
        ups.append((u.num_examples, float(u.metrics.get("loss", 0.0)),
                    {n: (RowSparse.from_dense(v[None]) if n in items else v)
                     for n, v in u.params.items()}))
    stacked: Stacked = {
        n: (RowSparse.concat([u[n] for _, _, u in ups]) if n in items
            else torch.stack([u[n] for _, _, u in ups]))
        for n in params}
    return stacked, [k for k, _, _ in ups], [loss for _, loss, _ in ups]


class FederatedTrainer(FederatedTrainerBase):
    """Local (in-process, batched) federated engine; one step = one round.

    Parameters
    ----------
    fed : Federation
        Data, model, threat model, attack and schedule.
    aggregator : ServerAggregator
        The server pipeline.
    chunk_size : int
        Clients per vmapped chunk of the per-client path.
    """

    def __init__(self, fed: Federation, aggregator: ServerAggregator, chunk_size: int = 64) -> None:
        super().__init__(fed, aggregator)
        self.chunk_size = chunk_size
        self.sparse_items = self.ctx.cfg.federation.item_updates == "sparse"
        if self.sparse_items:
            why = sparse_item_support(self.ctx.model)
            if why is not None:
                raise ConfigError(f"federation.item_updates=sparse: {why}")
        # per-client norms are needed for the norm guard, so it turns the fast path off
        self.use_fast_path = (aggregator.defense.linear and self.ctx.cfg.federation.protocol == "fedsgd"
                              and aggregator.max_update_norm is None)

    # ------------------------------------------------------------------ one round
    def benign_updates(self, rc: RoundConfig, benign: np.ndarray, seqs: list[np.ndarray]
                       ) -> tuple[Stacked, torch.Tensor]:
        """The benign clients' stacked updates and losses (in-process, batched)."""
        return batched_updates(self.ctx.model, self.params, seqs, benign, rc, self.chunk_size,
                               sparse_items=self.sparse_items)

    def benign_combined(self, rc: RoundConfig, benign: np.ndarray, seqs: list[np.ndarray],
                        coef: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """``sum_i coef[i] * g_i`` over the benign clients (FedSGD) and their losses."""
        return combined_fedsgd_gradient(self.ctx.model, self.params, seqs, benign, coef, rc)

    def _malicious_updates(self, ids: np.ndarray, rc: RoundConfig
                           ) -> tuple[Stacked | None, list[int]]:
        stacked, counts, _ = malicious_updates(self.fed, self.params, ids, rc, self.sparse_items)
        return stacked, counts

    def _linear_fedsgd_round(self, step: int, rc: RoundConfig, benign: np.ndarray,
                             seqs: list[np.ndarray], weights_b: list[int], mal: np.ndarray,
                             mal_stacked: Stacked | None, mal_counts: list[int]
                             ) -> tuple[tuple[Params, RoundReport] | None, torch.Tensor]:
        """The fast path of a linear rule under FedSGD: ``Σ_i c_i g_i`` over the benign clients
        from one forward/backward, plus the malicious updates' share.

        Returns ``(None, losses)`` when any update is not finite: the caller then computes the
        round client by client so the server can identify and drop the offending updates.
        """
        weights = torch.tensor(weights_b + mal_counts, dtype=torch.float64)
        coef = self.aggregator.defense.coefficients(weights)
        total, losses = self.benign_combined(rc, benign, seqs, coef[: len(benign)])
        if nonfinite_keys(total) or (mal_stacked is not None and not bool(finite_rows(mal_stacked).all())):
            return None, losses
        k = len(benign)
        if mal_stacked is not None:  # the attackers' share in one product per parameter
            for n in total:
                m = mal_stacked[n]
                share = (m.combine(coef[k:]) if isinstance(m, RowSparse)
                         else torch.tensordot(coef[k:].to(total[n].dtype), m, dims=1))
                total[n] = total[n] + share
        all_ids = np.concatenate([benign, mal]).astype(np.int64)
        report = RoundReport(all_ids, np.ones(len(all_ids), dtype=bool))
        return self.aggregator.conclude(self.params, total, report, step, rc.epoch), losses

    def train_step(self, step: int) -> dict[str, float]:
        """Run round ``step``."""
        fed = self.fed
        rc = fed.round_config(step)
        ids = fed.schedule.clients(step)
        is_mal = np.isin(ids, fed.threat.malicious_ids)
        benign, mal = ids[~is_mal], ids[is_mal]
        seqs = [fed.client_sequence(int(c)) for c in benign]
        mal_stacked, mal_counts = self._malicious_updates(mal, rc)
        weights_b = [num_examples(s) for s in seqs]
        new_report = None
        if self.use_fast_path and len(benign):
            new_report, losses = self._linear_fedsgd_round(step, rc, benign, seqs, weights_b,
                                                           mal, mal_stacked, mal_counts)
        if new_report is None:
            stacked, losses = self.benign_updates(rc, benign, seqs)
            counts = np.zeros(len(ids))
            pos_b, pos_m = np.searchsorted(ids, benign), np.searchsorted(ids, mal)
            counts[pos_b], counts[pos_m] = weights_b, mal_counts
            if mal_stacked is not None:  # place every row at its client's position (ids sorted)
                stacked = place_clients([(stacked, pos_b), (mal_stacked, pos_m)], len(ids))
            new_report = self.aggregator.round(self.params, stacked,
                                               torch.tensor(counts, dtype=torch.float64), ids, step, rc.epoch)
        new, report = new_report
        self.params = new
        loss = float(losses.mean()) if losses is not None and len(losses) else math.nan
        return self.round_metrics(step, report, loss, len(ids))

    def client_side_eval(self) -> dict[str, float]:
        """Client-side evaluation, computed for all asked clients at once."""
        from clients.evaluate import client_evaluate

        users = self.fed.client_eval_users()
        data = [self.fed.client_eval_data(int(u)) for u in users]
        return client_evaluate(self.ctx.model, self.params, [d[0] for d in data],
                               np.array([d[1] for d in data]), self.ctx.cfg.eval.ks)

def build_federated_trainer(ctx: RunContext) -> Trainer:
    """The local-engine federated trainer (the Flower engine drives its own ServerApp)."""
    cfg = ctx.cfg
    fed = Federation.build(ctx)
    aggregator = build_aggregator(cfg, tuple(ctx.model.item_param_names), fed)
    if cfg.federation.engine != "local":
        raise ConfigError(f"federation.engine={cfg.federation.engine!r}: flower runs through "
                          "fedrec.engine.flower.run_flower, distributed through "
                          "fedrec.engine.distributed.build_distributed_trainer")
    return FederatedTrainer(fed, aggregator)
