"""A small Vision Transformer, trained here as the frozen feature teacher of the LaVIT-style
tokenizer (:mod:`fedrec.tokenizers.lavit`).

LaVIT (Jin et al., ICLR 2024, arXiv 2309.04669; code ``jy0205/LaVIT``) tokenizes the patch
features of a frozen EVA-CLIP ViT-G/14: the output of the last block *before* the final norm,
without the CLS token. No pretrained ViT ships inside the wheels we may use, so we train one on
the offline image set (:func:`fedrec.data.vision.image_set`) by classification [our choice]:

* patch embedding (a ``patch x patch`` convolution), learned positions, ``depth`` pre-LN blocks
  (multi-head self-attention + GELU MLP), no CLS token;
* :meth:`ViT.features` returns the last block's output ``X`` ``[B, N, dim]`` (before the final
  norm), LaVIT's reconstruction target;
* the classifier is ``Linear(LayerNorm(mean_i X_i))``, a function of ``X`` alone, so it can be
  applied to the tokenizer's *reconstructed* features (:meth:`ViT.classify_features`) — that is
  how the text-to-image accuracy of the benchmark is scored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


class Block(nn.Module):
    """Pre-LN transformer block (self-attention + MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, N, dim]`` -> ``[B, N, dim]``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch ViT classifier without a CLS token (module docstring).

    Parameters
    ----------
    image_size, patch : int
        Image side and patch side (``image_size`` divisible by ``patch``).
    channels : int
        Input channels.
    dim, depth, heads : int
        Width, number of blocks, attention heads.
    n_classes : int
        Classifier outputs.
    """

    def __init__(self, image_size: int = 32, patch: int = 4, channels: int = 1, dim: int = 64,
                 depth: int = 4, heads: int = 4, n_classes: int = 18) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch: {patch} does not divide image_size {image_size}")
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide dim {dim}")
        self.image_size, self.patch, self.dim = image_size, patch, dim
        self.n_patches = (image_size // patch) ** 2
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, self.n_patches, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def features(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` (or ``[B, H, W]``) -> last block's patch features ``[B, N, dim]``."""
        if images.dim() == 3:
            images = images[:, None]
        x = self.embed(images).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return x

    def classify_features(self, feats: Tensor) -> Tensor:
        """Class logits from patch features ``[B, N, dim]`` (mean pool, norm, linear)."""
        return self.head(self.norm(feats.mean(1)))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, n_classes]``."""
        return self.classify_features(self.features(images))


def train_teacher_epoch(model: ViT, optimizer: torch.optim.Optimizer, images: np.ndarray,
                        labels: np.ndarray, batch_size: int, rng: np.random.Generator,
                        augment: bool = True) -> float:
    """One epoch of cross-entropy training; returns the mean loss.

    Augmentation [our choice]: a random shift of up to 2 pixels (zero fill) per batch.
    """
    model.train()
    order = rng.permutation(len(images))
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = torch.from_numpy(images[idx])[:, None]
        if augment:
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            x = torch.roll(x, (dy, dx), (2, 3))
        loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(order)


@torch.no_grad()
def batched_features(model: ViT, images: np.ndarray, batch_size: int = 256) -> Tensor:
    """Teacher features ``[N, n_patches, dim]`` of ``images`` ``[N, H, W]`` in eval mode."""
    model.eval()
    return torch.cat([model.features(torch.from_numpy(images[s:s + batch_size]))
                      for s in range(0, len(images), batch_size)])
