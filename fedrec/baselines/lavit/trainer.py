"""Staged trainer of the LaVIT baseline on the project's step loop (checkpoints, ``--resume``,
``metrics.jsonl``, progress lines).

One step = one epoch of the current stage, in order: ``teacher_epochs`` of teacher ViT
classification (cross-entropy, Adam), ``phase_a_epochs`` of tokenizer phase A (no quantiser),
``phase_b_epochs`` of phase B (quantiser on, selector frozen), ``lm_epochs`` of the unified LM
on the final tokenizer's visual tokens of the training images (both orders). ``train.epochs``
must equal their sum. The teacher is frozen after its stage; its features are recomputed (in
eval mode, deterministic) after a resume. The training loss of each stage is logged under
``train/`` (``loss`` plus the stage's terms).

Data: :func:`fedrec.data.vision.image_set` with the run seed, split 70/10/20 into train / valid /
test. Evaluation runs once, after the last step (the stages are a fixed schedule, so there is no
model selection), on ``valid`` and then ``test``; the metrics are those of
:mod:`fedrec.baselines.lavit.pipeline`. The ``data`` section of the config is not used.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fedrec.baselines.lavit.pipeline import (
    caption_accuracy,
    linear_probe,
    lm_sequences,
    split_images,
    text_to_image_accuracy,
    tokenize_all,
    tokenizer_metrics,
    train_lm_epoch,
    train_tokenizer_epoch,
)
from fedrec.data.split import LeaveOneOut
from fedrec.data.vision import image_set
from fedrec.engine.centralized import EpochTrainer
from fedrec.errors import ConfigError
from fedrec.tokenizers.vit import batched_features, train_teacher_epoch

log = logging.getLogger("fedrec")

STAGES = ("teacher", "A", "B", "lm")


class LaViTTrainer(EpochTrainer):
    """Teacher -> phase A -> phase B -> LM, one epoch per step (module docstring)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        cfg, model = ctx.cfg, ctx.model
        total = sum(model.schedule.values())
        if cfg.train.epochs != total:
            raise ConfigError(f"train.epochs: {cfg.train.epochs}; expected {total}, the sum of "
                              "model.params teacher_epochs, phase_a_epochs, phase_b_epochs, "
                              "lm_epochs")
        images = image_set(cfg.seed, model.image_size, model.n_digits, model.crops_per_texture)
        self.data = split_images(images)
        ctx.split = LeaveOneOut(train=[], valid=np.zeros(0, np.int64), test=np.zeros(0, np.int64),
                                n_items=len(images.labels), name="vision:digits+skimage")
        log.info("lavit images: %s", {k: len(v.labels) for k, v in self.data.items()})
        lrs = model.lrs
        self.optimizers = {
            "teacher": torch.optim.Adam(model.teacher.parameters(), lr=lrs["teacher"]),
            "tokenizer": torch.optim.Adam(model.tokenizer.parameters(), lr=lrs["tokenizer"]),
            "lm": torch.optim.Adam(model.lm.parameters(), lr=lrs["lm"])}
        self.optimizer = self.optimizers["teacher"]
        self.steps_done = 0
        self._feats: dict[str, torch.Tensor] | None = None
        self._lm_seqs: list[list[int]] | None = None

    # ------------------------------------------------------------------ schedule
    def stage(self, step: int) -> str:
        """Stage of step ``step``."""
        edge = 0
        for name in STAGES:
            edge += self.ctx.model.schedule[name]
            if step < edge:
                return name
        raise ValueError(f"step {step} is past the schedule")

    def is_eval_step(self, step: int) -> bool:
        """Only after the last step (the loop always evaluates then)."""
        return False

    def _ran(self, name: str) -> bool:
        """Whether stage ``name`` has at least one finished epoch."""
        before = 0
        for s in STAGES:
            if s == name:
                return self.ctx.model.schedule[s] > 0 and self.steps_done > before
            before += self.ctx.model.schedule[s]
        raise ValueError(name)

    def features(self) -> dict[str, torch.Tensor]:
        """Frozen teacher features of every split (computed once)."""
        if self._feats is None:
            self._feats = {k: batched_features(self.ctx.model.teacher, v.images)
                           for k, v in self.data.items()}
        return self._feats

    # ------------------------------------------------------------------ steps
    def train_step(self, step: int) -> dict[str, float]:
        """One epoch of the stage of ``step``."""
        model, cfg = self.ctx.model, self.ctx.cfg
        rng = np.random.default_rng([cfg.seed, step])
        bs = cfg.train.batch_size
        stage = self.stage(step)
        tr = self.data["train"]
        if stage == "teacher":
            self._feats = None
            loss = train_teacher_epoch(model.teacher, self.optimizers["teacher"], tr.images,
                                       tr.labels, bs, rng)
            out = {"loss": loss}
        elif stage in ("A", "B"):
            model.teacher.requires_grad_(False)
            model.tokenizer.set_phase(stage)
            out = train_tokenizer_epoch(model.tokenizer, self.optimizers["tokenizer"],
                                        self.features()["train"], bs, rng)
        else:
            if self._lm_seqs is None:
                codes, *_ = tokenize_all(model.tokenizer, self.features()["train"])
                self._lm_seqs = lm_sequences(model.vocab, codes, tr.captions)
            out = {"loss": train_lm_epoch(model.lm, self.optimizers["lm"], self._lm_seqs, bs,
                                          rng)}
        self.steps_done = step + 1
        return out

    def evaluate(self, split: str) -> dict[str, float]:
        """Every measurement available after the stages that ran (module docstring)."""
        model, data = self.ctx.model, self.data
        feats = self.features()
        ev, tr = data[split], data["train"]
        with torch.no_grad():
            model.teacher.eval()
            pred = torch.cat([model.teacher.classify_features(feats[split][s:s + 512])
                              for s in range(0, len(ev.labels), 512)]).argmax(1).numpy()
        out = {"teacher_accuracy": float((pred == ev.labels).mean())}
        it = model.probe_max_iter
        out["probe_teacher"] = linear_probe(feats["train"].mean(1).numpy(), tr.labels,
                                            feats[split].mean(1).numpy(), ev.labels, it)
        out["probe_pixels"] = linear_probe(tr.images.reshape(len(tr.labels), -1), tr.labels,
                                           ev.images.reshape(len(ev.labels), -1), ev.labels, it)
        tok = model.tokenizer
        if not (self._ran("A") or self._ran("B")):
            return out
        tok.set_phase("B" if self._ran("B") else "A")
        out.update(tokenizer_metrics(tok, feats[split], ev.complexity))
        _, rec_tr, _, _ = tokenize_all(tok, feats["train"])
        codes, rec_ev, _, _ = tokenize_all(tok, feats[split])
        out["probe_decoded"] = linear_probe(rec_tr.mean(1).numpy(), tr.labels,
                                            rec_ev.mean(1).numpy(), ev.labels, it)
        if self._ran("lm") and tok.quantize:
            out["caption_accuracy"] = caption_accuracy(model.lm, model.vocab, codes, ev.captions)
            out["text_to_image_accuracy"] = text_to_image_accuracy(
                model.lm, model.vocab, tok, model.teacher, model.t2i_samples, model.max_tokens,
                self.ctx.cfg.seed + (1 if split == "test" else 0))
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Model, the three optimizers, steps done and torch RNG state."""
        return {"model": self.model_state(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "steps_done": self.steps_done, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (cached features and LM sequences are recomputed)."""
        self.ctx.model.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.steps_done = int(state["steps_done"])
        torch.set_rng_state(state["torch_rng"])
        self._feats, self._lm_seqs = None, None
        if self.steps_done > self.ctx.model.schedule["teacher"]:
            self.ctx.model.teacher.requires_grad_(False)
