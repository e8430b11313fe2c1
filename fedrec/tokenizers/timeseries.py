"""CrossTimeNet's per-domain time-series tokenizer: a VQ-VAE over patches of ``wl`` time steps.

Paper: M. Cheng, X. Tao, Q. Liu, H. Zhang, Y. Chen, D. Lian, "Cross-Domain Pre-training with
Language Models for Transferable Time Series Representations" (CrossTimeNet), WSDM 2025,
arXiv 2403.12372. Public code: GitHub ``Mingyue-Cheng/CrossTimeNet`` (``TStokenizer/``).

What follows the paper (its abstract): continuous series become discrete tokens by a
reconstruction objective with vector quantisation; one tokenizer per domain, so each domain keeps
its own channel count and temporal resolution.

What follows the public code (``TStokenizer/model.py``, ``loss.py``, ``args.py``):

* input ``[B, L, C]``; encoder = ``Linear(C -> d)`` then a TCN of residual blocks with dilations
  ``[1, 4] * n_blocks``; each block has two causal dilated convolutions (kernel 3, the second
  with twice the dilation), each followed by dropout, ``LayerNorm(eps=1e-8)`` and ReLU, and a
  ReZero-style residual ``x + a * out`` with ``a`` initialised to 1e-8; then ``Linear(d -> d)``
  (Xavier-normal weights, bias 0.1 inside the TCN);
* patching after the encoder: one linear map of each non-overlapping window of ``wl`` steps x
  ``d`` features to a ``d``-vector, so ``T = L / wl`` tokens mix all channels;
* an EMA quantiser (decay 0.99, eps 1e-5, Kaiming-uniform codebook, squared-L2 nearest code,
  straight-through), see :mod:`fedrec.tokenizers.vq`;
* decoder = a learned linear map from the ``T`` token slots to the ``L`` steps (the code's
  ``Conv1d(T, L, 1)``, shared over features), a TCN of the same design and ``Linear(d -> C)``;
* loss = ``MSE(x_hat, x) + 0.25 * ||z - sg(q)||^2``; Adam (lr 5e-4, weight decay 1e-5), learning
  rate x0.99 every 300 steps, gradient clipping at norm 5, batch 32;
* input scaling: each sample min-max scaled over all its channels jointly to ``[-1, 1]``, then
  x2.5 (:func:`scale_series`).

Our inference or changes: the code's VQ "diff" adds ``0.25 * mse(q, sg(z))``, which carries no
gradient (the codebook is EMA); we leave that constant out of the loss, so the gradients are the
code's and the reported loss is lower by it. Our defaults are smaller than the code's (``d = 64``,
``n_blocks = 2`` instead of 4, 256 codes instead of 512) for the tiny UCR/UEA sets; the spec's
"d = 32-64, 2-4 blocks, 64-256 codes" range. k-means initialisation and dead-code restart come
from :mod:`fedrec.tokenizers.vq` (the code uses neither). The code selects its checkpoint on
test MSE; :func:`train_tokenizer` reports a validation MSE instead and selects nothing. Layout: we
take ``[B, C, L]`` (as :mod:`fedrec.data.timeseries` returns) and transpose inside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedrec.errors import NonFiniteError
from fedrec.tokenizers.vq import VectorQuantizer, nearest_code, perplexity


def scale_series(X: np.ndarray | Tensor, factor: float = 2.5) -> Tensor:
    """Per-sample min-max scaling over all channels jointly to ``[-1, 1]``, times ``factor``.

    A constant sample becomes zeros. ``X`` is ``[n, C, L]`` and must be finite.

    Raises
    ------
    ValueError
        Non-finite values (resample or crop padded data first).
    """
    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise ValueError("X: expected finite values (pad/resample unequal lengths first)")
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    span = (hi - lo).clamp_min(1e-12)
    out = torch.where(hi > lo, 2.0 * (x - lo) / span - 1.0, torch.zeros_like(x))
    return out * factor


class TCNBlock(nn.Module):
    """A residual block of two causal dilated convolutions (kernel ``k``; dilations ``r, 2r``)."""

    def __init__(self, d: int, dilation: int, kernel: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.k, self.r = kernel, dilation
        self.conv1 = nn.Conv1d(d, d, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(d, d, kernel, dilation=2 * dilation)
        self.ln1 = nn.LayerNorm(d, eps=1e-8)
        self.ln2 = nn.LayerNorm(d, eps=1e-8)
        self.drop = nn.Dropout(dropout)
        self.a = nn.Parameter(torch.tensor(1e-8))

    def _conv(self, x: Tensor, conv: nn.Conv1d, dilation: int, ln: nn.LayerNorm) -> Tensor:
        # x: [B, L, d]; left padding keeps the convolution causal.
        h = F.pad(x.transpose(1, 2), ((self.k - 1) * dilation, 0))
        return F.relu(ln(self.drop(conv(h).transpose(1, 2))))

    def forward(self, x: Tensor) -> Tensor:
        out = self._conv(x, self.conv1, self.r, self.ln1)
        out = self._conv(out, self.conv2, 2 * self.r, self.ln2)
        return x + self.a * out


class TCN(nn.Module):
    """``2 * n_blocks`` :class:`TCNBlock` with dilations 1, 4, 1, 4, ... then ``Linear(d, d)``."""

    def __init__(self, d: int, n_blocks: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[TCNBlock(d, r, dropout=dropout)
                                      for r in [1, 4] * n_blocks])
        self.out = nn.Linear(d, d)
        nn.init.xavier_normal_(self.out.weight)
        nn.init.constant_(self.out.bias, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(x))


@dataclass
class TokenizerOutput:
    """What :meth:`TimeSeriesTokenizer.forward` returns (``recon`` is ``[B, C, L]``)."""

    recon: Tensor
    ids: Tensor
    loss: Tensor
    recon_loss: Tensor
    commitment: Tensor
    counts: Tensor
    perplexity: Tensor
    usage: float


class TimeSeriesTokenizer(nn.Module):
    """One domain's tokenizer: series ``[B, channels, length]`` <-> ids ``[B, length / wl]``.

    Parameters
    ----------
    channels : int
        Number of channels ``C`` of the domain.
    length : int
        Series length ``L`` (a multiple of ``wl``).
    wl : int
        Patch length (the code's ``wave_length``): one token per ``wl`` steps.
    codebook_size : int
        Codes in this domain's codebook.
    d_model : int
        Hidden width ``d`` (also the code dimension).
    n_blocks : int
        TCN depth: ``2 * n_blocks`` residual blocks in the encoder and in the decoder.
    dropout : float
        Dropout inside the TCN blocks.
    beta : float
        Commitment weight.
    decay, eps, kmeans_init, restart_after, seed
        Passed to :class:`~fedrec.tokenizers.vq.VectorQuantizer` (``seed`` also seeds the
        weights).
    """

    def __init__(
        self,
        channels: int,
        length: int,
        wl: int,
        codebook_size: int = 256,
        d_model: int = 64,
        n_blocks: int = 2,
        dropout: float = 0.1,
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        restart_after: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels < 1 or length < 1 or wl < 1:
            raise ValueError(f"channels, length, wl: expected positive integers, got "
                             f"{channels}, {length}, {wl}")
        if length % wl:
            raise ValueError(f"wl: expected a divisor of length {length}, got {wl} (crop or "
                             "resample the series to a multiple of wl)")
        if n_blocks < 1 or d_model < 1:
            raise ValueError(f"n_blocks, d_model: expected positive integers, got {n_blocks}, "
                             f"{d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {dropout}")
        self.channels, self.length, self.wl = channels, length, wl
        self.n_tokens = length // wl
        self.beta = beta
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc_in = nn.Linear(channels, d_model)
            self.enc = TCN(d_model, n_blocks, dropout)
            self.patch = nn.Linear(wl * d_model, d_model)
            self.unpatch = nn.Linear(self.n_tokens, length)
            self.dec = TCN(d_model, n_blocks, dropout)
            self.dec_out = nn.Linear(d_model, channels)
        self.vq = VectorQuantizer(d_model, codebook_size, decay=decay, eps=eps, beta=beta,
                                  kmeans_init=kmeans_init, restart_after=restart_after, seed=seed)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1:] != (self.channels, self.length):
            raise ValueError(f"x: expected [batch, {self.channels}, {self.length}], got "
                             f"{tuple(x.shape)}")

    def encode_latent(self, x: Tensor) -> Tensor:
        """Continuous patch vectors ``[B, T, d]`` before quantisation."""
        self._check(x)
        h = self.enc(self.enc_in(x.transpose(1, 2)))  # [B, L, d]
        b = h.shape[0]
        return self.patch(h.reshape(b, self.n_tokens, self.wl * h.shape[-1]))

    def decode_latent(self, q: Tensor) -> Tensor:
        """Series ``[B, C, L]`` from (quantised) patch vectors ``[B, T, d]``."""
        h = self.unpatch(q.transpose(1, 2)).transpose(1, 2)  # [B, L, d]
        return self.dec_out(self.dec(h)).transpose(1, 2)

    def forward(self, x: Tensor) -> TokenizerOutput:
        """Encode, quantise, decode; the loss is ``MSE + beta * commitment``."""
        vq = self.vq(self.encode_latent(x))
        recon = self.decode_latent(vq.quantized)
        recon_loss = F.mse_loss(recon, x)
        loss = recon_loss + self.beta * vq.commitment
        return TokenizerOutput(recon, vq.ids, loss, recon_loss, vq.commitment, vq.counts,
                               vq.perplexity, vq.usage)

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> Tensor:
        """Token ids ``[B, T]``, computed in eval mode (no dropout, no codebook update)."""
        was = self.training
        self.eval()
        try:
            z = self.encode_latent(x).reshape(-1, self.vq.dim)
            return nearest_code(z, self.vq.codebook).view(x.shape[0], self.n_tokens)
        finally:
            self.train(was)

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """Series ``[B, C, L]`` reconstructed from ids ``[B, T]``, in eval mode."""
        was = self.training
        self.eval()
        try:
            return self.decode_latent(self.vq.lookup(ids))
        finally:
            self.train(was)


@dataclass
class EpochStats:
    """One epoch of :func:`train_tokenizer` (``val_mse`` is NaN without validation data)."""

    epoch: int
    loss: float
    recon_mse: float
    perplexity: float
    usage: float
    val_mse: float
    seconds: float


@torch.no_grad()
def evaluate(tokenizer: TimeSeriesTokenizer, X: Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction MSE, perplexity and codebook usage on ``X`` in eval mode (no EMA update)."""
    was = tokenizer.training
    tokenizer.eval()
    sq, n = 0.0, 0
    counts = torch.zeros(tokenizer.vq.codebook_size, dtype=torch.long)
    for start in range(0, len(X), batch_size):
        xb = X[start: start + batch_size]
        out = tokenizer(xb)
        sq += float(F.mse_loss(out.recon, xb, reduction="sum"))
        n += xb.numel()
        counts += out.counts.cpu()
    tokenizer.train(was)
    return {"mse": sq / max(n, 1), "perplexity": float(perplexity(counts)),
            "usage": float((counts > 0).float().mean())}


def tokenizer_optimizer(tokenizer: nn.Module, lr: float = 5e-4,
                        weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """The code's Adam for a tokenizer (lr 5e-4 and weight decay 1e-5 by default)."""
    return torch.optim.Adam(tokenizer.parameters(), lr=lr, weight_decay=weight_decay)


def decayed_lr(base_lr: float, step: int) -> float:
    """The code's schedule: ``base_lr * 0.99 ** (step // 300)`` after ``step`` optimizer steps."""
    return base_lr * 0.99 ** (step // 300)


def train_epoch(
    tokenizer: TimeSeriesTokenizer,
    X: Tensor,
    optimizer: torch.optim.Optimizer,
    order: Tensor,
    *,
    base_lr: float,
    first_step: int = 0,
    batch_size: int = 32,
    clip: float = 5.0,
    epoch: int = 0,
) -> tuple[dict[str, float], int]:
    """One epoch of tokenizer training over ``X[order]`` in batches of ``batch_size``.

    Each optimizer step ``t`` (counted from ``first_step``) runs at
    ``decayed_lr(base_lr, t)`` and clips gradients at norm ``clip``. Dropout draws from torch's
    global generator.

    Returns
    -------
    stats, steps : dict, int
        ``loss``, ``recon_mse``, ``perplexity``, ``usage`` over the epoch's training
        assignments, and the number of optimizer steps taken.

    Raises
    ------
    NonFiniteError
        A non-finite loss (a run stops and is marked failed).
    """
    tokenizer.train()
    tot_loss = tot_sq = 0.0
    n_el = steps = 0
    counts = torch.zeros(tokenizer.vq.codebook_size, dtype=torch.long)
    for start in range(0, len(order), batch_size):
        xb = X[order[start: start + batch_size]]
        out = tokenizer(xb)
        if not torch.isfinite(out.loss):
            raise NonFiniteError(f"epoch {epoch}: non-finite tokenizer loss")
        for group in optimizer.param_groups:
            group["lr"] = decayed_lr(base_lr, first_step + steps)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        nn.utils.clip_grad_norm_(tokenizer.parameters(), clip)
        optimizer.step()
        steps += 1
        tot_loss += float(out.loss.detach()) * len(xb)
        tot_sq += float(out.recon_loss.detach()) * xb.numel()
        n_el += xb.numel()
        counts += out.counts.detach().cpu()
    stats = {"loss": tot_loss / max(len(order), 1), "recon_mse": tot_sq / max(n_el, 1),
             "perplexity": float(perplexity(counts)),
             "usage": float((counts > 0).float().mean())}
    return stats, steps


def train_tokenizer(
    tokenizer: TimeSeriesTokenizer,
    X: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 1e-5,
    clip: float = 5.0,
    seed: int = 0,
    X_val: Tensor | None = None,
) -> list[EpochStats]:
    """Train ``tokenizer`` on ``X`` ``[n, C, L]`` (already scaled) with Adam.

    The learning rate is multiplied by 0.99 every 300 steps and gradients are clipped at norm
    ``clip`` (the CrossTimeNet code's schedule; :func:`train_epoch`). Batches are a seeded
    permutation per epoch. Perplexity and usage are over the epoch's training assignments.

    Returns
    -------
    list of EpochStats
        One per epoch.

    Raises
    ------
    ValueError
        Bad sizes, or non-finite data.
    NonFiniteError
        A non-finite loss.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs, batch_size, lr: expected positive values, got {epochs}, "
                         f"{batch_size}, {lr}")
    X = torch.as_tensor(X, dtype=torch.float32)
    if not torch.isfinite(X).all():
        raise ValueError("X: expected finite values")
    opt = tokenizer_optimizer(tokenizer, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    stats: list[EpochStats] = []
    step = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        for epoch in range(epochs):
            t0 = time.perf_counter()
            order = torch.randperm(len(X), generator=gen)
            got, steps = train_epoch(tokenizer, X, opt, order, base_lr=lr, first_step=step,
                                     batch_size=batch_size, clip=clip, epoch=epoch)
            step += steps
            val = evaluate(tokenizer, X_val)["mse"] if X_val is not None else float("nan")
            stats.append(EpochStats(epoch, got["loss"], got["recon_mse"], got["perplexity"],
                                    got["usage"], val, time.perf_counter() - t0))
    return stats
