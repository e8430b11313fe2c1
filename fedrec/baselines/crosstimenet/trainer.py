"""CrossTimeNet's staged trainer on the project's step loop (checkpoints, ``--resume``, early
stopping, ``metrics.jsonl``), and its evaluation.

A run performs ``model.params.stages`` in order; one step is one epoch of the current stage:

* ``tokenizer`` (``tokenizer_epochs`` steps): one epoch of every domain's tokenizer on its train
  split (:func:`fedrec.tokenizers.timeseries.train_epoch`: Adam, x0.99 every 300 steps,
  clipping 5; a separate Adam per domain);
* ``pretrain`` (``pretrain_epochs`` steps): masked-token prediction over ``pretrain_domains``.
  As in the code, each batch holds one domain and an epoch visits every domain's batches in a
  shuffled order (so domains are mixed in proportion to their size). Adam (``pretrain_lr``,
  weight decay 1e-5), linear warm-up over ``warmup`` of the stage's steps, then linear decay;
* ``finetune`` (``train.epochs`` steps): cross-entropy on the target domain's train split,
  batches of ``train.batch_size``, Adam (``train.lr``, ``train.weight_decay``), same schedule.

The tokenizers are trained on the train split only; the validation split (carved from the
official train file, stratified, seeded) selects the model; the official test split is used
once, for the final report. The pre-training stage sees only the train split's series (no
labels).

Evaluation happens in the last stage only (every ``train.eval_every`` epochs) and reports:

* after ``finetune``: ``accuracy``, ``macro_f1`` (:func:`macro_f1`) and ``neg_loss`` (minus the
  mean cross-entropy) of the target domain; on the test split also ``usage`` and
  ``perplexity`` of the target's test tokens;
* after ``pretrain``: ``mlm_accuracy`` and ``neg_mlm_loss`` over the pre-training domains with
  fixed seeded masks (at most :data:`EVAL_MLM_SERIES` series per domain), plus per-domain
  ``usage/<domain>`` and ``perplexity/<domain>`` of the test tokens on the test split;
* after ``tokenizer``: per-domain ``mse/<domain>``, ``usage/<domain>``,
  ``perplexity/<domain>`` and ``neg_mse`` (minus their mean MSE).

``train.metric`` selects the best epoch among those (higher is better). A later run reads the
selected model of this one through ``model.params.init_from``. All randomness is keyed by (seed,
stage, epoch, batch), and dropout's generator is checkpointed, so a resumed run repeats the
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fedrec.baselines.crosstimenet.data import Domain, load_domain
from fedrec.data.registry import data_root
from fedrec.data.split import LeaveOneOut
from fedrec.engine.centralized import EpochTrainer
from fedrec.errors import ConfigError, FedRecError, NonFiniteError
from fedrec.results import load_checkpoint_file
from fedrec.tokenizers.timeseries import evaluate as tokenizer_eval
from fedrec.tokenizers.timeseries import tokenizer_optimizer, train_epoch
from fedrec.tokenizers.vq import perplexity

log = logging.getLogger("fedrec")

#: most series per domain in the pre-training evaluation (keeps a test evaluation cheap)
EVAL_MLM_SERIES = 200
_STAGE_CODE = {"tokenizer": 1, "pretrain": 2, "finetune": 3}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes in ``y_true`` or ``y_pred`` (as
    ``sklearn.metrics.f1_score(average="macro")``; a class never predicted right has F1 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == c) & (y_true == c))
        denom = np.sum(y_pred == c) + np.sum(y_true == c)
        scores.append(2.0 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def linear_schedule(step: int, total: int, warmup: float) -> float:
    """LR factor of optimizer step ``step`` (0-based) of ``total``: linear warm-up over
    ``round(warmup * total)`` steps from ``1 / w`` to 1, then linear decay to ``1 / (total -
    w)`` at the last step (never 0, so no step is wasted)."""
    w = round(warmup * total)
    if step < w:
        return (step + 1) / w
    return max(total - step, 1) / max(total - w, 1)


def _generator(*key: int) -> torch.Generator:
    seed = np.random.SeedSequence(list(key)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def _batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i: i + size] for i in range(0, n, size)]


class CrossTimeNetTrainer(EpochTrainer):
    """The stages of ``model.params.stages`` (module docstring).

    Parameters
    ----------
    ctx : RunContext
        Its model must be a :class:`~fedrec.baselines.crosstimenet.model.CrossTimeNet`.
    domains : dict of Domain, optional
        Loaded domains by name (default: loaded from ``data.root`` / ``$FEDREC_DATA``).
    """

    def __init__(self, ctx: Any, domains: dict[str, Domain] | None = None) -> None:
        self.ctx = ctx
        model = ctx.model  # a CrossTimeNet
        cfg = ctx.cfg
        self.seed = int(cfg.seed)
        split_seed = model.split_seed if model.split_seed is not None else self.seed
        if domains is None:
            root = data_root(cfg.data.root)
            domains = {n: load_domain(n, root, val_fraction=model.val_fraction, seed=split_seed)
                       for n in model.domains}
        self.domains = domains
        model.attach([domains[n] for n in model.domains], self.seed)
        self.encoder_trained = False
        if model.init_from:
            self._load_previous(model.init_from)
        epochs = {"tokenizer": model.tokenizer_epochs, "pretrain": model.pretrain_epochs,
                  "finetune": cfg.train.epochs}
        self.plan: list[tuple[str, int, int]] = []  # (stage, first step, epochs)
        first = 0
        for stage in model.stages:
            self.plan.append((stage, first, epochs[stage]))
            first += epochs[stage]
        self._n_steps = first
        self.tok_opts = [tokenizer_optimizer(model.tokenizers[n], model.tokenizer_lr)
                         for n in model.domains]
        self.tok_steps = [0 for _ in model.domains]
        self.pre_opt = torch.optim.Adam(model.pretrain_parameters(), lr=model.pretrain_lr,
                                        weight_decay=1e-5)
        self.ft_opt = torch.optim.Adam(model.finetune_parameters(), lr=cfg.train.lr,
                                       weight_decay=cfg.train.weight_decay)
        self.optimizer = self.ft_opt  # EpochTrainer's attribute; the state holds all three
        self.pre_step = self.ft_step = 0
        pre_batches = sum(math.ceil(len(domains[n].y["train"]) / model.pretrain_batch_size)
                          for n in model.pretrain_domains)
        self.pre_total = model.pretrain_epochs * pre_batches
        self.ft_total = cfg.train.epochs * math.ceil(
            len(domains[model.target].y["train"]) / cfg.train.batch_size)
        self._tokens: dict[str, dict[str, torch.Tensor]] | None = None
        self._features: dict[str, torch.Tensor] | None = None  # frozen fine-tuning cache
        last = model.stages[-1]
        names = model.target if last == "finetune" else "+".join(
            model.pretrain_domains if last == "pretrain" else model.domains)
        n_train = sum(len(domains[n].y["train"]) for n in names.split("+"))
        ctx.split = LeaveOneOut([np.zeros(0, np.int64)] * n_train, np.zeros(0, np.int64),
                                np.zeros(0, np.int64), 0, f"timeseries:{names}")
        for n in model.domains:
            d = domains[n]
            log.info("domain %s: %d channels, length %d, wl %d -> %d tokens, %d classes, "
                     "train/valid/test %s", n, d.channels, d.length, d.wl, d.n_tokens,
                     d.n_classes, d.sizes())

    # ------------------------------------------------------------------------------ previous run
    def _load_previous(self, where: str) -> None:
        model = self.ctx.model
        path = Path(where)
        key = "model.params.init_from"
        if path.is_dir():
            if not (path / "summary.json").is_file():
                raise ConfigError(f"{key}: {path} is not a finished run (no summary.json); "
                                  "finish it first (fedrec run ... --resume)")
            path = path / "checkpoint.pt"
        if not path.is_file():
            raise ConfigError(f"{key}: {path} not found; expected a finished CrossTimeNet run "
                              "directory or its checkpoint.pt")
        try:
            ckpt = load_checkpoint_file(path)
        except FedRecError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        trainer = ckpt.get("trainer") if isinstance(ckpt, dict) else None
        meta = trainer.get("meta") if isinstance(trainer, dict) else None
        if not isinstance(meta, dict) or "domains" not in meta:
            raise ConfigError(f"{key}: {path} is not a CrossTimeNet checkpoint")
        state = ckpt.get("loop", {}).get("best_model") or trainer["model"]
        for n in model.domains:
            prefix = f"tokenizers.{n}."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not part:
                raise ConfigError(f"{key}: {path} has no tokenizer for domain {n!r} (it has "
                                  f"{', '.join(meta['domains'])})")
            try:
                model.tokenizers[n].load_state_dict(part)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1].strip()
                raise ConfigError(f"{key}: the tokenizer of {n!r} in {path} does not fit this "
                                  f"run's tokenizer settings ({first})") from None
        if not meta.get("encoder_trained"):
            return
        if list(meta["domains"]) != model.domains:
            raise ConfigError(f"{key}: {path} trained its encoder over the vocabulary of "
                              f"{meta['domains']}; this run's domains {model.domains} give "
                              "another one (use the same model.params.domains)")
        for prefix, module in (("encoder.", model.encoder), ("mlm_head.", model.mlm_head)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                module.load_state_dict(part)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1].strip()
                raise ConfigError(f"{key}: the encoder in {path} does not fit this run's "
                                  f"model.params.encoder ({first})") from None
        self.encoder_trained = True
        log.info("started from %s (tokenizers and the trained encoder)", path)

    # ------------------------------------------------------------------------------ schedule
    @property
    def n_steps(self) -> int:
        """Epochs of every stage of the run."""
        return self._n_steps

    def stage_of(self, step: int) -> tuple[str, int]:
        """``(stage, epoch within the stage)`` of ``step``."""
        for stage, first, n in self.plan:
            if first <= step < first + n:
                return stage, step - first
        raise IndexError(f"step {step} is beyond the run's {self._n_steps} steps")

    def is_eval_step(self, step: int) -> bool:
        """Every ``train.eval_every`` epochs of the last stage."""
        stage, epoch = self.stage_of(step)
        return stage == self.plan[-1][0] and (epoch + 1) % self.ctx.cfg.train.eval_every == 0

    def step_info(self, step: int) -> dict[str, Any]:
        """The stage of the step."""
        return {"stage": self.stage_of(step)[0]}

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Model, the three optimizers, step counters, dropout RNG and what later runs need
        to know (``meta``)."""
        model = self.ctx.model
        trained = self.encoder_trained or any(
            s in model.stages for s in ("pretrain", "finetune"))
        return {"model": self.model_state(),
                "tok_opts": [o.state_dict() for o in self.tok_opts],
                "pre_opt": self.pre_opt.state_dict(), "ft_opt": self.ft_opt.state_dict(),
                "tok_steps": list(self.tok_steps), "pre_step": self.pre_step,
                "ft_step": self.ft_step, "torch_rng": torch.get_rng_state(),
                "meta": {"domains": list(model.domains), "encoder_trained": trained,
                         "stages": list(model.stages), "init": model.init,
                         "embedding": model.embedding}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.ctx.model.load_state_dict(state["model"])
        for opt, s in zip(self.tok_opts, state["tok_opts"], strict=True):
            opt.load_state_dict(s)
        self.pre_opt.load_state_dict(state["pre_opt"])
        self.ft_opt.load_state_dict(state["ft_opt"])
        self.tok_steps = list(state["tok_steps"])
        self.pre_step, self.ft_step = int(state["pre_step"]), int(state["ft_step"])
        torch.set_rng_state(state["torch_rng"])
        self._tokens = self._features = None

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Load model parameters (and forget the caches built from the old ones)."""
        super().load_model_state(state)
        self._tokens = self._features = None

    # ------------------------------------------------------------------------------ tokens
    def tokens(self) -> dict[str, dict[str, torch.Tensor]]:
        """Joint ids of every domain and split, from the current (frozen) tokenizers."""
        if self._tokens is None:
            model = self.ctx.model
            self._tokens = {n: {s: model.tokenize(n, X) for s, X in d.X.items()}
                            for n, d in self.domains.items()}
        return self._tokens

    # ------------------------------------------------------------------------------ training
    def train_step(self, step: int) -> dict[str, float]:
        """One epoch of the step's stage."""
        stage, epoch = self.stage_of(step)
        model = self.ctx.model
        model.train()
        if stage != "tokenizer":
            model.tokenizers.eval()
        if stage == "tokenizer":
            return self._tokenizer_epoch(epoch)
        if stage == "pretrain":
            return self._pretrain_epoch(epoch)
        return self._finetune_epoch(epoch)

    def _tokenizer_epoch(self, epoch: int) -> dict[str, float]:
        model = self.ctx.model
        self._tokens = self._features = None
        out: dict[str, float] = {}
        losses = []
        for i, n in enumerate(model.domains):
            X = self.domains[n].X["train"]
            rng = np.random.default_rng([self.seed, _STAGE_CODE["tokenizer"], epoch, i])
            order = torch.as_tensor(rng.permutation(len(X)))
            stats, steps = train_epoch(model.tokenizers[n], X, self.tok_opts[i], order,
                                       base_lr=model.tokenizer_lr, first_step=self.tok_steps[i],
                                       batch_size=model.tokenizer_batch_size, epoch=epoch)
            self.tok_steps[i] += steps
            losses.append(stats["loss"])
            out[f"mse/{n}"] = stats["recon_mse"]
            out[f"usage/{n}"] = stats["usage"]
        model.tokenizers.eval()
        out["loss"] = float(np.mean(losses))
        return out

    def _set_lr(self, opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
        factor = linear_schedule(step, total, self.ctx.model.warmup)
        for group in opt.param_groups:
            group["lr"] = base * factor

    def _pretrain_epoch(self, epoch: int) -> dict[str, float]:
        model, tokens = self.ctx.model, self.tokens()
        rng = np.random.default_rng([self.seed, _STAGE_CODE["pretrain"], epoch])
        batches = [(n, idx) for n in model.pretrain_domains
                   for idx in _batches(len(tokens[n]["train"]), model.pretrain_batch_size, rng)]
        order = rng.permutation(len(batches))
        total = correct = masked = 0.0
        for b, k in enumerate(order):
            n, idx = batches[k]
            gen = _generator(self.seed, _STAGE_CODE["pretrain"], epoch, b)
            loss, right, count = model.mlm_loss(tokens[n]["train"][idx], gen)
            self._set_lr(self.pre_opt, model.pretrain_lr, self.pre_step, self.pre_total)
            self.pre_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.pre_opt.step()
            self.pre_step += 1
            total += float(loss.detach()) * count
            correct += right
            masked += count
        return {"loss": total / max(masked, 1), "mlm_accuracy": correct / max(masked, 1),
                "lr": self.pre_opt.param_groups[0]["lr"]}

    def _finetune_epoch(self, epoch: int) -> dict[str, float]:
        model, cfg = self.ctx.model, self.ctx.cfg
        ids = self.tokens()[model.target]["train"]
        y = self.domains[model.target].y["train"]
        rng = np.random.default_rng([self.seed, _STAGE_CODE["finetune"], epoch])
        total = correct = 0.0
        for idx in _batches(len(ids), cfg.train.batch_size, rng):
            logits = self._logits("train", ids, idx)
            loss = F.cross_entropy(logits, y[idx])
            self._set_lr(self.ft_opt, cfg.train.lr, self.ft_step, self.ft_total)
            self.ft_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.ft_opt.step()
            self.ft_step += 1
            total += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(-1) == y[idx]).sum())
        return {"loss": total / len(ids), "accuracy": correct / len(ids),
                "lr": self.ft_opt.param_groups[0]["lr"]}

    def _logits(self, split: str, ids: torch.Tensor, idx: np.ndarray | slice) -> torch.Tensor:
        """Target logits of ``ids[idx]``; a frozen encoder's states are computed once."""
        model = self.ctx.model
        if model.finetune_mode != "frozen":
            return model.classify(ids[idx])
        if self._features is None:
            self._features = {}
        if split not in self._features:
            was = model.encoder.training
            model.encoder.eval()
            with torch.no_grad():
                self._features[split] = torch.cat([
                    model.hidden_states(ids[i: i + 256]) for i in range(0, len(ids), 256)])
            model.encoder.train(was)
        return model.head(self._features[split][idx])

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of the run's last stage on ``split`` (module docstring)."""
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}")
        model = self.ctx.model
        was = model.training
        model.eval()
        try:
            last = self.plan[-1][0]
            if last == "finetune":
                return self._eval_classifier(split)
            if last == "pretrain":
                return self._eval_mlm(split)
            return self._eval_tokenizers(split)
        finally:
            model.train(was)
            if self.ctx.model.stages[-1] != "tokenizer":
                model.tokenizers.eval()

    @torch.no_grad()
    def _eval_classifier(self, split: str) -> dict[str, float]:
        model = self.ctx.model
        ids = self.tokens()[model.target][split]
        y = self.domains[model.target].y[split]
        logits = torch.cat([self._logits(split, ids, slice(i, i + 256))
                            for i in range(0, len(ids), 256)])
        if not torch.isfinite(logits).all():
            raise NonFiniteError(f"non-finite class scores on {split}")
        pred = logits.argmax(-1)
        out = {"accuracy": float((pred == y).float().mean()),
               "macro_f1": macro_f1(y.numpy(), pred.numpy()),
               "neg_loss": -float(F.cross_entropy(logits, y))}
        if split == "test":
            out.update(self._usage(model.target, prefix=""))
        return out

    def _usage(self, domain: str, prefix: str) -> dict[str, float]:
        model = self.ctx.model
        ids = self.tokens()[domain]["test"] - model.vocab.offset(domain)
        counts = torch.bincount(ids.flatten(), minlength=model.codebook_size)
        return {f"usage{prefix}": float((counts > 0).float().mean()),
                f"perplexity{prefix}": float(perplexity(counts))}

    @torch.no_grad()
    def _eval_mlm(self, split: str) -> dict[str, float]:
        model = self.ctx.model
        total = correct = masked = 0.0
        for i, n in enumerate(model.pretrain_domains):
            ids = self.tokens()[n][split][:EVAL_MLM_SERIES]
            for b in range(0, len(ids), 256):
                gen = _generator(self.seed, 99, i, b)  # the same masks at every evaluation
                loss, right, count = model.mlm_loss(ids[b: b + 256], gen)
                total += float(loss) * count
                correct += right
                masked += count
        out = {"mlm_accuracy": correct / max(masked, 1),
               "neg_mlm_loss": -total / max(masked, 1)}
        if split == "test":
            for n in model.domains:
                out.update(self._usage(n, prefix=f"/{n}"))
        return out

    def _eval_tokenizers(self, split: str) -> dict[str, float]:
        model = self.ctx.model
        out: dict[str, float] = {}
        for n in model.domains:
            got = tokenizer_eval(model.tokenizers[n], self.domains[n].X[split])
            out[f"mse/{n}"] = got["mse"]
            out[f"usage/{n}"] = got["usage"]
            out[f"perplexity/{n}"] = got["perplexity"]
        out["neg_mse"] = -float(np.mean([out[f"mse/{n}"] for n in model.domains]))
        return out
