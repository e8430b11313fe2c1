"""One federation, two engines: what the local and the Flower engine derive from a config.

* :class:`Federation`: data and model (:class:`~fedrec.engine.context.RunContext`), threat
  model, attack and round schedule; the per-round client config; the server's root update
  (FLTrust); client-side evaluation data.
* :func:`build_aggregator`: the server pipeline (validation, defense, server optimizer).
* :class:`FederatedTrainerBase`: the step-loop trainer both engines subclass (global
  parameters, evaluation, checkpointed state, the round metrics).

The local engine (:mod:`fedrec.engine.federated`) computes a round's clients in-process and
batched; the Flower engine (:mod:`fedrec.engine.flower`) sends them as messages. Both hand the
updates to the same :class:`~strategies.server.ServerAggregator`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.base import Attack
from attacks.registry import build_attack
from attacks.threat import ThreatModel, build_threat_model
from clients.update import RoundConfig, batched_updates, combined_fedsgd_gradient
from defenses.registry import build_defense
from fedrec.config import ExperimentConfig
from fedrec.device import cuda_rng_state, set_cuda_rng_state, to_device
from fedrec.engine.context import RunContext
from fedrec.engine.converged import load_initial_params
from fedrec.engine.loop import Trainer
from fedrec.engine.schedule import RoundSchedule
from fedrec.errors import ConfigError
from fedrec.models.base import load_params
from fedrec.rowsparse import RowSparse
from strategies.optimizer import ServerOptimizer
from strategies.server import RoundReport, ServerAggregator, detection_metrics

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


def check_round_size(aggregator: ServerAggregator, schedule: RoundSchedule, rule: str) -> None:
    """Refuse, before any round runs, a rule whose parameters need more clients than the
    schedule's smallest round holds (e.g. Krum's ``2f + 2 < n`` in the short last round of an
    epoch).

    Raises
    ------
    ConfigError
        One line naming the rule, what it needs and the round sizes.
    """
    need = aggregator.defense.min_clients()
    small = schedule.smallest_round()
    if small < need:
        n = len(schedule.participants)
        raise ConfigError(
            f"defense.name={rule!r}: its parameters need at least {need} clients in a round, but "
            f"the last round of each epoch has {small} ({n} clients in rounds of "
            f"{schedule.size}); lower the rule's f or change federation.clients_per_round")


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
            sparse = self.ctx.cfg.federation.item_updates == "sparse"
            stacked, _ = batched_updates(model, params, seqs, root, rc, sparse_items=sparse)
            mean = torch.full((len(root),), 1.0 / len(root), dtype=torch.float64)
            return {n: (v.combine(mean) if isinstance(v, RowSparse) else v.mean(0))
                    for n, v in stacked.items()}

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


class FederatedTrainerBase(Trainer):
    """What both engines' trainers share; one step = one round.

    The global parameters, the round schedule and evaluation, the checkpointed state (global
    parameters, server state, torch RNG, last evaluation) and the round metrics. An engine
    implements :meth:`train_step` (how a round's updates are produced and reach the server) and
    :meth:`client_side_eval` (how clients are asked to evaluate).

    Parameters
    ----------
    fed : Federation
        Data, model, threat model, attack and schedule.
    aggregator : ServerAggregator
        The server pipeline.
    """

    unit = "round"

    def __init__(self, fed: Federation, aggregator: ServerAggregator) -> None:
        self.fed = fed
        self.ctx = fed.ctx
        self.aggregator = aggregator
        check_round_size(aggregator, fed.schedule, self.ctx.cfg.defense.name)
        self.params: Params = {n: p.detach().clone() for n, p in self.ctx.model.named_parameters()}
        if self.ctx.cfg.federation.init_from is not None:  # the converged protocol
            self.params = load_initial_params(self.ctx.cfg.federation.init_from, self.params)
        self.malicious = {int(c) for c in fed.threat.malicious_ids}
        self.last_eval: dict[str, float] = {}

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

    def round_metrics(self, step: int, report: RoundReport | None, loss: float,
                      n_clients: int) -> dict[str, float]:
        """The training metrics of round ``step`` (the same keys on every engine).

        Parameters
        ----------
        step : int
            Round index.
        report : RoundReport or None
            What the server did with the round's updates (None: no reply reached it).
        loss : float
            Mean training loss of the round's benign clients (nan when unknown).
        n_clients : int
            Clients the round was sent to.
        """
        out = {"loss": loss, "lr": self.aggregator.optimizer.current_lr(self.fed.schedule.epoch_of(step)),
               "clients": float(n_clients),
               "dropped": float(len(report.dropped)) if report is not None else 0.0,
               "refused": float(report is not None and report.refused is not None)}
        if report is not None:
            out.update({f"defense/{k}": v for k, v in report.extra.items()})
            out.update({f"defense/{k}": v for k, v in detection_metrics(report, self.malicious).items()})
        return out

    @abstractmethod
    def client_side_eval(self) -> dict[str, float]:
        """The clients' own evaluation reports, averaged (``federation.client_eval``)."""

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
        """Global parameters, server state, torch RNG (and CUDA's, on a GPU) and the last
        evaluation."""
        state = {"params": self.model_state(), "server": self.aggregator.state_dict(),
                 "torch_rng": torch.get_rng_state(), "last_eval": dict(self.last_eval)}
        if cuda := cuda_rng_state():
            state["cuda_rng"] = cuda
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (read onto the CPU; moved to the run's device)."""
        if self.ctx.device.type != "cpu":
            state = {**state, "params": to_device(state["params"], self.ctx.device),
                     "server": to_device(state["server"], self.ctx.device)}
        self.load_model_state(state["params"])
        self.aggregator.load_state_dict(state["server"])
        torch.set_rng_state(state["torch_rng"])
        set_cuda_rng_state(state.get("cuda_rng"))
        self.last_eval = dict(state.get("last_eval", {}))


