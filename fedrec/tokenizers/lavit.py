"""LaVIT-style dynamic discrete visual tokenizer, small scale.

Paper: Y. Jin, K. Xu, K. Xu, L. Chen, C. Liao, J. Tan, Q. Huang, B. Chen, C. Lei, A. Liu, C. Song,
X. Lei, D. Zhang, W. Ou, K. Gai, Y. Mu, "Unified Language-Vision Pretraining in LLM with Dynamic
Discrete Visual Tokenization", ICLR 2024, arXiv 2309.04669. Public code: ``jy0205/LaVIT``
(inference only; read, not copied). Written from the project's notes
(``specs/ssl_methods.md`` section 2).

Pipeline: frozen teacher patch features ``X`` ``[B, N, D]`` (:mod:`fedrec.tokenizers.vit`) ->
token selector (keep/drop per patch) -> token merger (kept tokens absorb the dropped ones) ->
``Linear-Tanh-Linear`` task layer to ``code_dim``, l2-normalised -> EMA vector quantiser
(:class:`fedrec.tokenizers.vq.VectorQuantizer`) -> a variable number of discrete tokens per
image. A feature decoder reconstructs all ``N`` teacher features from the codes.

Follows the public code [CODE]:

* **Selector** (``TokenPredictor``, DynamicViT's local-global predictor): ``LayerNorm -> Linear
  -> GELU``; the first half of the channels is the local feature, the second half is averaged
  over the tokens whose policy is 1 (all tokens at tokenization) and broadcast back; their
  concatenation goes through ``Linear(D, D/2) -> GELU -> Linear(D/2, D/4) -> GELU ->
  Linear(D/4, 2) -> LogSoftmax``. Decision ``M = gumbel_softmax(log pi, tau, hard=True)[..., 0]``
  (index 0 = keep); the straight-through estimator carries the gradient to the selector.
* **Merger** (``TokenMerger``): ``x_origin = LayerNorm(X)`` is computed once; every block has
  (1) causal self-attention under the policy — key ``j`` is visible to query ``i`` iff
  ``(M_j = 1 or j = i) and j <= i`` (raster order); (2) cross-attention from every token to
  ``x_origin`` where only *dropped* tokens are visible (mask ``1 - M``, not causal); (3) an MLP;
  pre-LN, residual. Masking is multiplicative with the code's eps-softmax
  ``(exp(a - max) * mask + eps / N) / (sum + eps)``, ``eps = 1e-6`` (:func:`policy_softmax`).
  A final LayerNorm, then the rows with ``M = 1`` are gathered (:func:`gather_kept`).
* **Quantiser input**: ``Linear(D, D) -> Tanh -> Linear(D, code_dim)`` then l2-normalisation.
* **Decoder**: ``in_proj(code_dim -> D)`` plus a learned position embedding indexed by the kept
  token's *rank* (not its spatial position), codes padded to the batch maximum with a key mask;
  ``N`` learned queries, blocks of self-attention among the queries -> cross-attention to the
  codes -> MLP; LayerNorm; ``Linear -> Tanh -> Linear`` to ``D``.

Follows the maintainers' answers [ISSUE #3, #10, #29]: k-means initialised EMA codebook,
cosine reconstruction of the teacher features, and two phases: **phase A** trains selector,
merger, task layer and decoder without quantisation; **phase B** freezes the selector and trains
the rest with the quantiser on (issue #10 says phase A trains only the predictor with the rest
frozen; we follow #29 and the notes' schedule, which train the decoder in phase A as well).

Loss [RECALL + INFER]: ``mean_{b,i} (1 - cos(X^_bi, X_bi)) + ratio_weight * L_ratio + beta *
mean ||z - sg(q)||^2`` (defaults ``rho = 1/3``, ``ratio_weight = 2`` as DynamicViT, ``beta = 1``
as BEiT v2). ``L_ratio`` is ``(rho - mean_{b,i} M_bi)^2`` over the batch by default
(``ratio_per="batch"``, DynamicViT's "dynamic" form) [INF]: the per-image form
``mean_b (rho - mean_i M_bi)^2`` (``ratio_per="image"``) pushes every image to the same count,
which contradicts the content-dependent token counts the paper is about; which one LaVIT uses
is not known.

Our choices [INF], stated so they can be changed:

* The quantiser is the project's EMA quantiser (Laplace-smoothed EMA of *sums*, not BEiT v2's
  re-normalised codes): its input is l2-normalised and the selected code is l2-normalised again
  before the decoder, so the decoder always sees unit vectors.
* The decision is sampled (hard Gumbel) at evaluation too, as in the released code, but from a
  generator with a fixed seed, so an evaluation call is reproducible (training draws advance a
  counter kept in the buffers). The argmax would be deterministic but keeps *nothing* when the
  selector is uniformly unsure (``pi_keep = rho < 1/2`` everywhere satisfies the ratio loss).
* An image whose sampled policy keeps no token keeps its most likely one (a decoder needs at
  least one code).
* ``mode="fixed"`` is the ablation without a selector: ``round(rho * N)`` patches at evenly
  spaced raster positions are kept for every image, with the same merger, quantiser and decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedrec.tokenizers.vq import VectorQuantizer

MODES = ("dynamic", "fixed")


# ----------------------------------------------------------------------------- functions
def gumbel_keep(log_probs: Tensor, tau: float = 1.0, hard: bool = True,
                generator: torch.Generator | None = None) -> Tensor:
    """Keep decision ``[...]`` from ``log_probs`` ``[..., 2]`` (index 0 = keep).

    ``softmax((log pi + g) / tau)`` with Gumbel noise ``g``; ``hard`` returns the one-hot of its
    argmax with the straight-through estimator (value one-hot, gradient of the soft sample).
    """
    u = torch.rand(log_probs.shape, generator=generator, dtype=log_probs.dtype)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    soft = torch.softmax((log_probs + g.to(log_probs.device)) / tau, dim=-1)
    if not hard:
        return soft[..., 0]
    onehot = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return (onehot - soft.detach() + soft)[..., 0]


def ratio_loss(policy: Tensor, rho: float, per: str = "image") -> Tensor:
    """Keep-ratio penalty of a policy ``[B, N]``: ``mean_b (rho - mean_i M_bi)^2`` (``per=
    "image"``) or ``(rho - mean_{b,i} M_bi)^2`` (``per="batch"``)."""
    if per == "batch":
        return (rho - policy.mean()).pow(2)
    return (rho - policy.mean(1)).pow(2).mean()


def policy_softmax(scores: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """The code's masked softmax over the last axis: ``(exp(a - max a) * mask + eps / N) /
    (sum_j exp(a_j - max a) * mask_j + eps)``, computed in float32; the max runs over all keys.

    A row with no visible key becomes uniform (``1 / N``).
    """
    dtype = scores.dtype
    s = scores.float()
    e = torch.exp(s - s.amax(-1, keepdim=True)) * mask.float()
    n = s.shape[-1]
    return ((e + eps / n) / (e.sum(-1, keepdim=True) + eps)).to(dtype)


def self_attention_mask(policy: Tensor) -> Tensor:
    """``[B, N, N]``: key ``j`` visible to query ``i`` iff ``(M_j = 1 or j = i) and j <= i``.

    Differentiable in ``policy`` (the straight-through gradient reaches the selector).
    """
    n = policy.shape[1]
    eye = torch.eye(n, dtype=policy.dtype, device=policy.device)
    causal = torch.tril(torch.ones(n, n, dtype=policy.dtype, device=policy.device))
    visible = policy[:, None, :] * (1 - eye) + eye
    return visible * causal


def cross_attention_mask(policy: Tensor) -> Tensor:
    """``[B, N, N]``: every query sees the dropped keys (``1 - M_j``), not causal."""
    n = policy.shape[1]
    return (1 - policy)[:, None, :].expand(-1, n, -1)


def gather_kept(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``x`` ``[B, N, D]`` with ``keep`` ``[B, N]`` (bool), in raster order, padded.

    Returns
    -------
    tokens : Tensor ``[B, K, D]`` (``K`` = most kept in the batch; padding rows are 0)
    valid : Tensor ``[B, K]`` bool
    """
    counts = keep.sum(1)
    k = max(int(counts.max()), 1)
    rank = keep.long().cumsum(1) - 1
    b, n = keep.shape
    out = x.new_zeros(b, k, x.shape[-1])
    rows, cols = keep.nonzero(as_tuple=True)
    out = out.index_put((rows, rank[rows, cols]), x[rows, cols])
    valid = torch.arange(k, device=x.device)[None, :] < counts[:, None]
    return out, valid


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``mean (1 - cos(pred, target))`` over all rows of ``[..., D]``."""
    return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()


def fixed_keep(n: int, k: int) -> Tensor:
    """bool ``[n]``: ``k`` evenly spaced raster positions."""
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.from_numpy(np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)))] = True
    return keep


# ----------------------------------------------------------------------------- modules
class TokenSelector(nn.Module):
    """DynamicViT local-global keep/drop predictor (module docstring)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"dim: expected a multiple of 4, got {dim}")
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
            nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, policy: Tensor | None = None) -> Tensor:
        """Log-probabilities ``[B, N, 2]`` (keep, drop) of features ``x`` ``[B, N, D]``."""
        h = self.in_conv(x)
        half = h.shape[-1] // 2
        local, glob = h[..., :half], h[..., half:]
        if policy is None:
            policy = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        w = policy[..., None]
        glob = (glob * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1e-6)
        return self.out_conv(torch.cat([local, glob.expand(-1, x.shape[1], -1)], -1))


class PolicyAttention(nn.Module):
    """Multi-head attention with the multiplicative eps-softmax mask (:func:`policy_softmax`)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide dim {dim}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, kv: Tensor, mask: Tensor) -> Tensor:
        """Queries from ``x`` ``[B, N, D]``, keys/values from ``kv`` ``[B, M, D]``, ``mask``
        ``[B, N, M]``."""
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = policy_softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5, mask[:, None])
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class FuserBlock(nn.Module):
    """Merger block: policy-causal self-attention, cross-attention to dropped tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = PolicyAttention(dim, heads)
        self.cross_attn = PolicyAttention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, x_origin: Tensor, policy: Tensor) -> Tensor:
        """``x`` ``[B, N, D]``, ``x_origin`` = LayerNorm of the input features, policy
        ``[B, N]``."""
        h = self.norm1(x)
        x = x + self.self_attn(h, h, self_attention_mask(policy))
        x = x + self.cross_attn(self.norm2(x), x_origin, cross_attention_mask(policy))
        return x + self.mlp(self.norm3(x))


class TokenMerger(nn.Module):
    """Stack of :class:`FuserBlock` with ``ln_vision`` on the raw features and a final norm."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.ln_vision = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([FuserBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: Tensor, policy: Tensor) -> Tensor:
        """Merged features ``[B, N, D]`` (only the kept rows are used later)."""
        x_origin = self.ln_vision(feats)
        x = feats
        for blk in self.blocks:
            x = blk(x, x_origin, policy)
        return self.norm(x)


class DecoderBlock(nn.Module):
    """Self-attention among queries, cross-attention to the codes, MLP (pre-LN)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, q: Tensor, codes: Tensor, valid: Tensor) -> Tensor:
        """Queries ``[B, N, D]``, codes ``[B, K, D]``, ``valid`` ``[B, K]``."""
        h = self.norm1(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        bias = torch.where(valid, 0.0, -1e4).to(q.dtype)  # the code's additive padding mask
        q = q + self.cross_attn(self.norm2(q), codes, codes, key_padding_mask=bias,
                                need_weights=False)[0]
        return q + self.mlp(self.norm3(q))


class FeatureDecoder(nn.Module):
    """Reconstructs all ``n_patches`` teacher features from a variable number of codes."""

    def __init__(self, code_dim: int, dim: int, out_dim: int, n_patches: int, depth: int,
                 heads: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(code_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, n_patches, dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, n_patches, dim) * 0.02)
        self.blocks = nn.ModuleList([DecoderBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.task = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))

    def forward(self, codes: Tensor, valid: Tensor) -> Tensor:
        """``codes`` ``[B, K, code_dim]`` (rank order), ``valid`` ``[B, K]`` ->
        ``[B, n_patches, out_dim]``."""
        k = codes.shape[1]
        c = self.in_proj(codes) + self.pos[:, :k]
        q = self.queries.expand(codes.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(q, c, valid)
        return self.task(self.norm(q))


@dataclass
class TokenizerOutput:
    """What :meth:`LaViTTokenizer.forward` returns.

    Attributes
    ----------
    recon : Tensor ``[B, N, D]`` reconstructed teacher features
    ids : Tensor ``[B, K]`` code ids (``-1`` at padding; all ``-1`` without quantisation)
    valid : Tensor ``[B, K]`` bool, which token slots are real
    policy : Tensor ``[B, N]`` keep decisions (straight-through in training)
    loss, cosine, ratio, commitment : Tensor
        Total loss and its terms (unweighted terms).
    counts : Tensor ``[codebook_size]`` or None
        Code counts of the batch when quantised.
    """

    recon: Tensor
    ids: Tensor
    valid: Tensor
    policy: Tensor
    loss: Tensor
    cosine: Tensor
    ratio: Tensor
    commitment: Tensor
    counts: Tensor | None

    @property
    def n_tokens(self) -> Tensor:
        """Tokens per image ``[B]``."""
        return self.valid.sum(1)


class LaViTTokenizer(nn.Module):
    """Selector + merger + quantiser + decoder over frozen teacher features (module docstring).

    Parameters
    ----------
    feat_dim : int
        Teacher feature width ``D`` (also the merger and decoder width, as in the code).
    n_patches : int
        Teacher patches ``N``.
    mode : str
        ``"dynamic"`` (selector) or ``"fixed"`` (evenly spaced ``round(rho * N)`` patches).
    merger_depth, decoder_depth, heads : int
        Blocks and heads.
    code_dim, codebook_size : int
        Quantiser code width and size.
    rho : float
        Target keep ratio in ``(0, 1]``.
    ratio_weight, beta : float
        Weights of the ratio and commitment losses.
    tau : float
        Gumbel temperature.
    ratio_per : str
        ``"batch"`` or ``"image"`` keep-ratio penalty (:func:`ratio_loss`).
    decay : float
        EMA decay of the codebook.
    seed : int
        Seed of the Gumbel draws and of the quantiser.
    """

    def __init__(self, feat_dim: int, n_patches: int, mode: str = "dynamic",
                 merger_depth: int = 2, decoder_depth: int = 2, heads: int = 4,
                 code_dim: int = 16, codebook_size: int = 256, rho: float = 1 / 3,
                 ratio_weight: float = 2.0, beta: float = 1.0, tau: float = 1.0,
                 decay: float = 0.99, seed: int = 0, ratio_per: str = "batch") -> None:
        super().__init__()
        if ratio_per not in ("batch", "image"):
            raise ValueError(f"ratio_per: {ratio_per!r}; expected 'batch' or 'image'")
        self.ratio_per = ratio_per
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r}; expected one of {MODES}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho: expected a keep ratio in (0, 1], got {rho}")
        if tau <= 0 or ratio_weight < 0 or beta < 0:
            raise ValueError("tau: expected > 0; ratio_weight, beta: expected >= 0")
        self.mode, self.rho, self.tau = mode, rho, tau
        self.ratio_weight, self.beta = ratio_weight, beta
        self.n_patches, self.seed = n_patches, seed
        self.selector = TokenSelector(feat_dim) if mode == "dynamic" else None
        self.merger = TokenMerger(feat_dim, merger_depth, heads)
        self.encode_task = nn.Sequential(nn.Linear(feat_dim, feat_dim), nn.Tanh(),
                                         nn.Linear(feat_dim, code_dim))
        self.quantizer = VectorQuantizer(code_dim, codebook_size, decay=decay, beta=beta,
                                         kmeans_init=True, seed=seed)
        self.decoder = FeatureDecoder(code_dim, feat_dim, feat_dim, n_patches, decoder_depth,
                                      heads)
        self.register_buffer("fixed", fixed_keep(n_patches, max(1, round(rho * n_patches))))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.quantize = False

    def set_phase(self, phase: str) -> None:
        """``"A"``: no quantiser, everything trainable; ``"B"``: quantiser on, selector frozen."""
        if phase not in ("A", "B"):
            raise ValueError(f"phase: expected 'A' or 'B', got {phase!r}")
        self.quantize = phase == "B"
        if self.selector is not None:
            self.selector.requires_grad_(phase == "A")

    def select(self, feats: Tensor) -> Tensor:
        """Keep policy ``[B, N]`` (straight-through hard Gumbel; module docstring)."""
        b, n, _ = feats.shape
        if self.selector is None:
            return self.fixed[None].expand(b, -1).to(feats.dtype)
        logp = self.selector(feats)
        if self.training:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.draws))
            self.draws += 1
        else:  # the same draws at every evaluation call
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983)
        policy = gumbel_keep(logp, self.tau, hard=True, generator=g)
        empty = policy.detach().sum(1) == 0  # keep the most likely token of an empty image
        if bool(empty.any()):
            force = F.one_hot(logp[..., 0].argmax(1), n).to(feats.dtype) * empty[:, None]
            policy = policy + force
        return policy

    def encode(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Policy ``[B, N]``, l2-normalised pre-quantisation vectors ``[B, K, code_dim]`` and
        their ``valid`` mask ``[B, K]``."""
        policy = self.select(feats)
        merged = self.merger(feats, policy)
        tokens, valid = gather_kept(merged, policy.detach() > 0.5)
        z = F.normalize(self.encode_task(tokens), dim=-1)
        return policy, z, valid

    def forward(self, feats: Tensor) -> TokenizerOutput:
        """Tokenize and reconstruct teacher features ``[B, N, D]`` (losses included)."""
        policy, z, valid = self.encode(feats)
        ids = torch.full(valid.shape, -1, dtype=torch.long, device=feats.device)
        zero = feats.new_zeros(())
        commitment, counts, codes = zero, None, z
        if self.quantize:
            vq = self.quantizer(z[valid])
            codes = z.new_zeros(z.shape).index_put(valid.nonzero(as_tuple=True),
                                                   F.normalize(vq.quantized, dim=-1))
            ids[valid] = vq.ids
            commitment, counts = vq.commitment, vq.counts
        recon = self.decoder(codes, valid)
        cos = cosine_loss(recon, feats)
        ratio = (ratio_loss(policy, self.rho, self.ratio_per) if self.selector is not None
                 else zero)
        loss = cos + self.ratio_weight * ratio + self.beta * commitment
        return TokenizerOutput(recon, ids, valid, policy, loss, cos, ratio, commitment, counts)

    def decode_ids(self, ids: Tensor, valid: Tensor) -> Tensor:
        """Reconstructed features ``[B, N, D]`` from code ids ``[B, K]`` (rank order)."""
        codes = F.normalize(self.quantizer.lookup(ids.clamp_min(0)), dim=-1)
        codes = codes * valid[..., None].to(codes.dtype)
        return self.decoder(codes, valid)
