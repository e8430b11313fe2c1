"""Federated training with the in-process (local) engine.

One step = one server round. The round's benign clients are computed as **one batched
computation**: for a linear rule (sum/mean) under FedSGD the combined gradient
``Σ c_i ∇L_i`` comes from a single forward/backward (:func:`clients.update.combined_fedsgd_gradient`);
for any other rule, or FedAvg, per-client updates come from ``torch.func.vmap``
(:func:`clients.update.batched_updates`). Malicious clients craft their updates with the attack.
The server side (:class:`strategies.server.ServerAggregator`: validation, defense, server
optimizer) is the same object the Flower strategy uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.base import Attack
from attacks.registry import build_attack
from attacks.threat import ThreatModel, build_threat_model
from clients.update import (
    RoundConfig,
    batched_updates,
    combined_fedsgd_gradient,
    num_examples,
)
from defenses.registry import build_defense
from fedrec.config import ExperimentConfig
from fedrec.engine.context import RunContext
from fedrec.engine.loop import Trainer
from fedrec.engine.schedule import RoundSchedule
from fedrec.errors import ConfigError
from fedrec.models.base import load_params
from strategies.optimizer import ServerOptimizer
from strategies.server import RoundReport, ServerAggregator, detection_metrics
from strategies.validation import finite_rows, nonfinite_keys

Params = dict[str, torch.Tensor]


def build_aggregator(cfg: ExperimentConfig, item_param_names: tuple[str, ...],
                     fed: Federation | None = None) -> ServerAggregator:
    """The server pipeline of a config (defense + server optimizer).

    A rule that needs a server update on clean data (FLTrust) gets one from ``fed``: the
    server's root set is ``defense.root_users`` benign users' training sequences.
    """
    fc = cfg.federation
    defense = build_defense(cfg.defense.name, dict(cfg.defense.params))
    opt = ServerOptimizer(fc.server_optimizer, fc.server_lr, fc.lr_decay, fc.lr_decay_every,
                          betas=tuple(fc.server_betas))
    root_fn = None
    if getattr(defense, "needs_root_update", False):
        if fed is None:
            raise ConfigError(f"defense.name={cfg.defense.name!r} needs the server's root data")
        root_fn = fed.root_update_fn(cfg.defense.root_users)
    return ServerAggregator(defense, opt, fc.protocol, item_param_names, cfg.seed, root_fn,
                            max_update_norm=fc.max_update_norm)


@dataclass
class Federation:
    """Everything both engines derive from a config: data/model, threat model, attack, schedule."""

    ctx: RunContext
    threat: ThreatModel
    attack: Attack
    schedule: RoundSchedule

    @classmethod
    def build(cls, ctx: RunContext) -> Federation:
        """Resolve threat model, attack and schedule for ``ctx.cfg``."""
        cfg = ctx.cfg
        threat = build_threat_model(cfg.attack, ctx.split, cfg.seed)
        attack = build_attack(cfg.attack.name, dict(cfg.attack.params), cfg.attack.scale)
        fc = cfg.federation
        schedule = RoundSchedule(threat.participants(), fc.clients_per_round, cfg.seed,
                                 epochs=fc.epochs, rounds=fc.rounds)
        ctx.targets = [int(t) for t in threat.targets]
        ctx.eval_users = threat.benign_users()
        return cls(ctx, threat, attack, schedule)

    def round_config(self, round_idx: int) -> RoundConfig:
        """What clients are told in round ``round_idx``."""
        fc = self.ctx.cfg.federation
        return RoundConfig(round=round_idx, epoch=self.schedule.epoch_of(round_idx),
                           protocol=fc.protocol, seed=self.ctx.cfg.seed,
                           local_epochs=fc.local_epochs, local_lr=fc.local_lr)

    def client_sequence(self, client_id: int) -> np.ndarray:
        """Training sequence of a benign client."""
        return self.ctx.split.train[client_id]

    def root_update_fn(self, n_root: int) -> Callable[[Params, int], Params]:
        """The server's update on its root set (FLTrust): the mean update of ``n_root`` benign
        users' sequences, computed like a client update (same protocol and randomness)."""
        users = self.threat.benign_users()
        rng = np.random.default_rng([self.ctx.cfg.seed, 53])
        root = np.sort(rng.choice(users, size=min(n_root, len(users)), replace=False))
        seqs = [self.client_sequence(int(u)) for u in root]
        model = self.ctx.model

        def update(params: Params, round_idx: int) -> Params:
            rc = self.round_config(round_idx)
            if rc.protocol == "fedsgd":
                coef = torch.full((len(root),), 1.0 / len(root), dtype=torch.float64)
                grads, _ = combined_fedsgd_gradient(model, params, seqs, root, coef, rc)
                return grads
            stacked, _ = batched_updates(model, params, seqs, root, rc)
            return {n: v.mean(0) for n, v in stacked.items()}

        return update

    def client_eval_users(self) -> np.ndarray:
        """Benign clients asked for client-side evaluation (a seeded sample, sorted)."""
        users = self.threat.benign_users()
        frac = self.ctx.cfg.federation.client_eval_fraction
        k = max(1, int(math.ceil(frac * len(users))))
        if k >= len(users):
            return users
        return np.sort(np.random.default_rng([self.ctx.cfg.seed, 99]).choice(users, k, replace=False))

    def client_eval_data(self, client_id: int) -> tuple[np.ndarray, int]:
        """A client's evaluation history (train + validation item) and test item."""
        sp = self.ctx.split
        return np.append(sp.train[client_id], sp.valid[client_id]), int(sp.test[client_id])

    def is_eval_round(self, round_idx: int) -> bool:
        """Evaluate after this round?"""
        fc = self.ctx.cfg.federation
        if fc.eval_unit == "round":
            return (round_idx + 1) % fc.eval_every == 0
        if not self.schedule.is_epoch_end(round_idx):
            return False
        return (self.schedule.epoch_of(round_idx) + 1) % fc.eval_every == 0


class FederatedTrainer(Trainer):
    """Local (in-process, batched) federated engine; one step = one round."""

    unit = "round"

    def __init__(self, fed: Federation, aggregator: ServerAggregator, chunk_size: int = 64) -> None:
        self.fed = fed
        self.ctx = fed.ctx
        self.aggregator = aggregator
        self.chunk_size = chunk_size
        self.params: Params = {n: p.detach().clone() for n, p in self.ctx.model.named_parameters()}
        self.malicious = {int(c) for c in fed.threat.malicious_ids}
        self.last_eval: dict[str, float] = {}
        # per-client norms are needed for the norm guard, so it turns the fast path off
        self.use_fast_path = (aggregator.defense.linear and self.ctx.cfg.federation.protocol == "fedsgd"
                              and aggregator.max_update_norm is None)

    @property
    def n_steps(self) -> int:
        """Total rounds."""
        return self.fed.schedule.n_rounds

    def is_eval_step(self, step: int) -> bool:
        """Evaluate per ``federation.eval_every``/``eval_unit``."""
        return self.fed.is_eval_round(step)

    def step_info(self, step: int) -> dict[str, Any]:
        """Epoch of the round."""
        return {"epoch": self.fed.schedule.epoch_of(step)}

    # ------------------------------------------------------------------ one round
    def _malicious_updates(self, ids: np.ndarray, rc: RoundConfig) -> tuple[Params | None, list[int]]:
        if len(ids) == 0:
            return None, []
        ups = [self.fed.attack.craft(self.ctx.model, self.params, int(c), self.fed.threat, rc) for c in ids]
        stacked = {n: torch.stack([u.params[n] for u in ups]) for n in self.params}
        return stacked, [u.num_examples for u in ups]

    def _linear_fedsgd_round(self, step: int, rc: RoundConfig, benign: np.ndarray,
                             seqs: list[np.ndarray], weights_b: list[int], mal: np.ndarray,
                             mal_stacked: Params | None, mal_counts: list[int]
                             ) -> tuple[tuple[Params, RoundReport] | None, torch.Tensor]:
        """The fast path of a linear rule under FedSGD: ``Σ_i c_i g_i`` over the benign clients
        from one forward/backward, plus the malicious updates' share.

        Returns ``(None, losses)`` when any update is not finite: the caller then computes the
        round client by client so the server can identify and drop the offending updates.
        """
        weights = torch.tensor(weights_b + mal_counts, dtype=torch.float64)
        coef = self.aggregator.defense.coefficients(weights)
        total, losses = combined_fedsgd_gradient(self.ctx.model, self.params, seqs, benign,
                                                 coef[: len(benign)], rc)
        if nonfinite_keys(total) or (mal_stacked is not None and not bool(finite_rows(mal_stacked).all())):
            return None, losses
        k = len(benign)
        for j in range(len(mal)):
            for n in total:
                total[n] = total[n] + coef[k + j].to(total[n].dtype) * mal_stacked[n][j]
        all_ids = np.concatenate([benign, mal]).astype(np.int64)
        report = RoundReport(all_ids, np.ones(len(all_ids), dtype=bool))
        return self.aggregator.conclude(self.params, total, report, step, rc.epoch), losses

    def train_step(self, step: int) -> dict[str, float]:
        """Run round ``step``."""
        fed, ctx = self.fed, self.ctx
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
            stacked, losses = batched_updates(ctx.model, self.params, seqs, benign, rc, self.chunk_size)
            counts = np.zeros(len(ids))
            pos_b, pos_m = np.searchsorted(ids, benign), np.searchsorted(ids, mal)
            counts[pos_b], counts[pos_m] = weights_b, mal_counts
            if mal_stacked is not None:  # place every row at its client's position (ids sorted)
                full = {n: torch.empty((len(ids), *v.shape[1:]), dtype=v.dtype) for n, v in stacked.items()}
                for n in full:
                    full[n].index_copy_(0, torch.from_numpy(pos_b), stacked[n])
                    full[n].index_copy_(0, torch.from_numpy(pos_m), mal_stacked[n])
                stacked = full
            new_report = self.aggregator.round(self.params, stacked,
                                               torch.tensor(counts, dtype=torch.float64), ids, step, rc.epoch)
        new, report = new_report
        self.params = new
        out = {"loss": float(losses.mean()) if losses is not None and len(losses) else math.nan,
               "lr": self.aggregator.optimizer.current_lr(rc.epoch),
               "clients": float(len(ids)), "dropped": float(len(report.dropped)),
               "refused": float(report.refused is not None)}
        out.update({f"defense/{k}": v for k, v in report.extra.items()})
        out.update({f"defense/{k}": v for k, v in detection_metrics(report, self.malicious).items()})
        return out

    # ------------------------------------------------------------------ evaluation and state
    def _load_params(self) -> None:
        load_params(self.ctx.model, self.params)

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the global model on ``split`` over the benign users.

        With ``federation.client_eval`` the clients' own reports are added as ``client/...``.
        """
        self._load_params()
        metrics = self.ctx.evaluate(split)
        if self.ctx.cfg.federation.client_eval and split == "test":
            metrics.update({f"client/{k}": v for k, v in self.client_side_eval().items()})
        self.last_eval = metrics
        return metrics

    def client_side_eval(self) -> dict[str, float]:
        """Client-side evaluation, computed for all asked clients at once."""
        from clients.evaluate import client_evaluate

        users = self.fed.client_eval_users()
        data = [self.fed.client_eval_data(int(u)) for u in users]
        return client_evaluate(self.ctx.model, self.params, [d[0] for d in data],
                               np.array([d[1] for d in data]), self.ctx.cfg.eval.ks)

    def final_metrics(self) -> dict[str, float]:
        """Test metrics of the final global model."""
        return self.last_eval or self.evaluate("test")

    def model_state(self) -> dict[str, Any]:
        """Copy of the global parameters."""
        return {n: v.clone() for n, v in self.params.items()}

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Set the global parameters."""
        self.params = {n: v.clone() for n, v in state.items()}

    def parameters_to_check(self) -> dict[str, Any]:
        """The global parameters (no copy)."""
        return self.params

    def state_dict(self) -> dict[str, Any]:
        """Global parameters, server state, torch RNG and the last evaluation."""
        return {"params": self.model_state(), "server": self.aggregator.state_dict(),
                "torch_rng": torch.get_rng_state(), "last_eval": dict(self.last_eval)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.load_model_state(state["params"])
        self.aggregator.load_state_dict(state["server"])
        torch.set_rng_state(state["torch_rng"])
        self.last_eval = dict(state.get("last_eval", {}))


def build_federated_trainer(ctx: RunContext) -> Trainer:
    """The local-engine federated trainer (the Flower engine drives its own ServerApp)."""
    cfg = ctx.cfg
    fed = Federation.build(ctx)
    aggregator = build_aggregator(cfg, tuple(ctx.model.item_param_names), fed)
    if cfg.federation.engine != "local":
        raise ConfigError("federation.engine='flower' runs through fedrec.engine.flower.run_flower")
    return FederatedTrainer(fed, aggregator)
