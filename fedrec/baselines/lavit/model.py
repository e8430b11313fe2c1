"""The LaVIT baseline's modules and hyperparameters as one registered model (``model.name:
lavit``), so ``fedrec run`` builds it, and its checkpoint holds the teacher, the tokenizer and the
unified LM together. Method: :mod:`fedrec.tokenizers.lavit` (tokenizer),
:mod:`fedrec.tokenizers.vit` (teacher), :mod:`fedrec.tokenizers.lavit_lm` (LM); schedule and
metrics: :mod:`fedrec.baselines.lavit.trainer`.
"""

from __future__ import annotations

from typing import Any

import torch

from fedrec.data.vision import class_captions_words, class_names
from fedrec.models.base import SequentialRecommender
from fedrec.tokenizers.lavit import LaViTTokenizer
from fedrec.tokenizers.lavit_lm import UnifiedLM, Vocabulary
from fedrec.tokenizers.vit import ViT

#: metrics of the final evaluation (``train.metric`` must be one of them)
METRICS = ("teacher_accuracy", "recon_cosine", "tokens_mean", "tokens_std",
           "tokens_complexity_corr", "codebook_usage", "codebook_perplexity",
           "probe_decoded", "probe_teacher", "probe_pixels", "caption_accuracy",
           "text_to_image_accuracy")


class LaViT(SequentialRecommender):
    """Teacher + tokenizer + unified LM (parameters: ``model.params``).

    Parameters
    ----------
    n_items : int
        Unused (the runner passes the size of ``data``); kept for the model contract.
    image_size, patch : int
        Image side and teacher patch side.
    teacher_dim, teacher_depth, heads : int
        Teacher ViT width, depth; attention heads everywhere.
    mode : str
        ``"dynamic"`` (selector) or ``"fixed"`` (ablation).
    merger_depth, decoder_depth, code_dim, codebook_size : int
        Tokenizer sizes.
    rho, ratio_weight, beta, tau, decay : float
        Keep ratio target and the tokenizer's loss weights, Gumbel temperature, EMA decay.
    ratio_per : str
        ``"batch"`` or ``"image"`` keep-ratio penalty.
    lm_dim, lm_depth : int
        Unified LM width and depth.
    teacher_epochs, phase_a_epochs, phase_b_epochs, lm_epochs : int
        The schedule (their sum must equal ``train.epochs``).
    teacher_lr, tokenizer_lr, lm_lr : float
        Adam learning rates of the three stages.
    n_digits, crops_per_texture : int
        Image set size (:func:`fedrec.data.vision.image_set`).
    probe_max_iter : int
        Iterations of the logistic-regression probes.
    t2i_samples : int
        Generated images per class for the text-to-image accuracy.
    seed : int
        Seed of the tokenizer's draws (the data and initialisation use the run seed).
    """

    def __init__(self, n_items: int = 0, image_size: int = 32, patch: int = 4,
                 teacher_dim: int = 64, teacher_depth: int = 4, heads: int = 4,
                 mode: str = "dynamic", merger_depth: int = 2, decoder_depth: int = 2,
                 code_dim: int = 16, codebook_size: int = 256, rho: float = 1 / 3,
                 ratio_weight: float = 2.0, beta: float = 1.0, tau: float = 1.0,
                 decay: float = 0.99, ratio_per: str = "batch", lm_dim: int = 64, lm_depth: int = 2,
                 teacher_epochs: int = 10, phase_a_epochs: int = 8, phase_b_epochs: int = 8,
                 lm_epochs: int = 15, teacher_lr: float = 1e-3, tokenizer_lr: float = 1e-3,
                 lm_lr: float = 1e-3, n_digits: int = 1797, crops_per_texture: int = 150,
                 probe_max_iter: int = 500, t2i_samples: int = 10, seed: int = 0) -> None:
        super().__init__(n_items=n_items, max_len=1)
        for key, val in (("teacher_epochs", teacher_epochs), ("phase_a_epochs", phase_a_epochs),
                         ("phase_b_epochs", phase_b_epochs), ("lm_epochs", lm_epochs)):
            if val < 0:
                raise ValueError(f"model.params.{key}: expected a non-negative integer, got {val}")
        for key, val in (("t2i_samples", t2i_samples), ("probe_max_iter", probe_max_iter)):
            if val < 1:
                raise ValueError(f"model.params.{key}: expected a positive integer, got {val}")
        n_classes = len(class_names())
        self.image_size, self.patch = image_size, patch
        self.schedule = {"teacher": teacher_epochs, "A": phase_a_epochs, "B": phase_b_epochs,
                         "lm": lm_epochs}
        self.lrs = {"teacher": teacher_lr, "tokenizer": tokenizer_lr, "lm": lm_lr}
        self.n_digits, self.crops_per_texture = n_digits, crops_per_texture
        self.probe_max_iter, self.t2i_samples = probe_max_iter, t2i_samples
        self.teacher = ViT(image_size, patch, 1, teacher_dim, teacher_depth, heads, n_classes)
        n = self.teacher.n_patches
        self.tokenizer = LaViTTokenizer(teacher_dim, n, mode, merger_depth, decoder_depth, heads,
                                        code_dim, codebook_size, rho, ratio_weight, beta, tau,
                                        decay, seed, ratio_per)
        self.vocab = Vocabulary(class_captions_words(), codebook_size)
        self.max_tokens = n
        self.lm = UnifiedLM(self.vocab.size, n + 12, lm_dim, lm_depth, heads)

    @classmethod
    def metric_names(cls, cfg: Any) -> list[str]:
        """Names the final evaluation reports (for ``train.metric``)."""
        return list(METRICS)

    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> Any:
        """Not a sequential recommender; the trainer drives the stages."""
        raise NotImplementedError("LaViT runs through its own trainer; see make_trainer")

    def make_trainer(self, ctx: Any) -> Any:
        """The staged LaVIT trainer for ``mode: centralized`` (called by the runner)."""
        from fedrec.baselines.lavit.trainer import LaViTTrainer

        return LaViTTrainer(ctx)
