"""GCL4SR: Graph Contrastive Learning for Sequential Recommendation.

Zhang, Liu, Xu, Xiong, Lei, He, Cui & Miao, "Enhancing Sequential Recommendation with Graph
Contrastive Learning", IJCAI 2022 (arXiv 2205.14837).

Pipeline for a batch of left-padded prefixes ``S`` of users ``u``:

1. Two graph views: for every distinct item of the batch, sample a neighbourhood on the weighted
   item transition graph (:mod:`.graph`) twice; encode each view with the shared GNN
   (weighted GCN layer, then a mean GraphSAGE layer with L2-normalised output; propagation in
   :mod:`.gnn`) from the shared item embeddings: ``H'``, ``H''`` ``[B, L, d]``.
2. User-specific gate (Eq. 4): ``Q = H ⊗ σ(H W_g1 + (p_u W_g2)_l)``, one scalar per position.
3. Sequence encoder: causal post-LN transformer over ``LayerNorm(E[S] (+ P))``: ``H^ℓ``.
4. Fusion (Eq. 9-10): ``M = AttNet(Concat(H^ℓ, Q', Q'') W_T)``; scores ``M Eᵀ`` over all items.
5. Loss (Eq. 12): ``L = CE + λ1 L_GCL(H', H'') + λ2 [MMD(E[S], Q') + MMD(E[S], Q'')]``.

The defaults follow the paper; ``preset="code"`` switches every documented difference of the
authors' public code (``sdu-zyx/GCL4SR``) on, and each one has its own parameter:

* ``gnn_layout`` - paper ``"paper"``: a GCN layer on the 2-hop sampled block, ReLU, dropout,
  then the SAGE layer on the 1-hop block. Code ``"code"``: the input embeddings are re-used at
  every layer, so GCN and SAGE both act on the 1-hop block (the code samples a 2nd hop and
  never uses it; here it is not sampled).
* ``seq_position`` - paper ``True``: learned positions added to the transformer input. Code
  ``False``: no position embedding in the transformer (positions only inside AttNet).
* ``train_gates`` - paper ``True``: ``W_g1``, ``W_g2`` are trained. Code ``False``: they are
  plain tensors left at their Xavier-uniform init (the user table still learns through them).
* ``gcl`` - paper ``"infonce"``: Eq. 3, one direction, negatives from the other view only.
  Code ``"ntxent"``: symmetric NT-Xent with intra-view negatives (``loss_a + loss_b``).
* ``mmd`` - paper ``"sequence"``: per sequence, its positions are samples in R^d, averaged over
  the batch. Code ``"batch"``: positions projected to scalars by learned d→1 maps, then one
  MMD over the batch with each sequence one sample in R^L.
* ``mmd_kernels`` - paper 1 Gaussian kernel; code 5 (bandwidths × 2^-2 .. 2^2).
* ``code_init`` - the paper gives no initialisation; default ``False``: the project's
  Xavier-normal matrices, zero biases, LayerNorm gain 1. Code ``True``: every parameter
  U(-1/√d, 1/√d), which is what the code's ``apply(_init_weights)`` ends up with.

Shared by both: WITG window 3 with weights 1/k and renormalisation, uniform sampling of N = 20
neighbours per hop, τ = 0.5, λ1 = 1, λ2 = 0.1, d = 64, 2 transformer layers
with 2 heads, GELU FFN of 4d, dropout 0.5 everywhere, max length 50, and Adam (lr 1e-3,
weight decay 5e-5) with StepLR(5 epochs, γ = 0.7) in the trainer (:mod:`.trainer`).

Implementation choices (neither source fixes them):

* Neighbourhoods are sampled once per *distinct item* per batch and view (GraphSAGE
  mini-batch style), with counter-based randomness keyed by (batch key, view, hop, item); the
  authors sample per flattened position, padding included. At evaluation the key is fixed
  (``sample_seed``), so an item's evaluation neighbourhoods do not depend on the batch.
* The MMD bandwidth ρ is not given in the paper; by default it is the mean pairwise squared
  distance of the pooled samples (the code's rule); ``mmd_bandwidth`` fixes it. The paper's
  MMD uses the gated representations before dropout; the code's ``"batch"`` form uses them
  after dropout and (here) with padding positions zeroed instead of included.
* Column 0 (padding) is excluded from the softmax and from ranking (the code scores it).
* ``scores(seqs)`` without user ids drops the user term of the gate (``p_u = 0``); the trainer
  always passes the user ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.baselines.gcl4sr.data import expand_prefixes
from fedrec.baselines.gcl4sr.gnn import mean_aggregate, weighted_gcn
from fedrec.baselines.gcl4sr.graph import WITG, build_witg, node_keys, sample_neighbors
from fedrec.baselines.gcl4sr.losses import info_nce, mmd_across_batch, mmd_per_sequence, nt_xent
from fedrec.data.batching import to_tensor
from fedrec.data.random import stream_key
from fedrec.models.base import Batch, SequentialRecommender, init_weights
from fedrec.models.transformer import Dropout, FeedForward, SelfAttention, attention_mask

#: Flag values of the two presets (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"gnn_layout": "paper", "seq_position": True, "train_gates": True, "gcl": "infonce",
              "mmd": "sequence", "mmd_kernels": 1, "code_init": False},
    "code": {"gnn_layout": "code", "seq_position": False, "train_gates": False, "gcl": "ntxent",
             "mmd": "batch", "mmd_kernels": 5, "code_init": True},
}

_EVAL_TAG = 0x6576616C  # stream id of evaluation-time sampling


def as_key(key: int | np.integer) -> np.uint64:
    """A 64-bit stream key from an int in ``[-2^63, 2^64)`` (int64 tensors hold it wrapped)."""
    return np.uint64(int(key) % (1 << 64))


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"model.{name}={value!r}: expected one of {list(choices)}")
    return value


class PostLNBlock(nn.Module):
    """``x = LN(x + Drop(MHA(x))); x = LN(x + FFN(x))`` (``torch.nn.TransformerEncoderLayer``)."""

    def __init__(self, d: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = SelfAttention(d, heads, attn_dropout)
        self.drop = Dropout(dropout)
        self.ln1 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, dropout, hidden=4 * d, act="gelu")
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` [B, L, d]."""
        x = self.ln1(x + self.drop(self.attn(x, x, allowed)))
        return self.ln2(x + self.ffn(x))


def _union(n: int, *arrays: np.ndarray) -> np.ndarray:
    """Sorted distinct ids in ``[0, n)`` of the given arrays (a mask pass, no sort)."""
    mark = np.zeros(n, dtype=bool)
    for a in arrays:
        mark[a] = True
    return np.flatnonzero(mark)


def _positions(nodes: np.ndarray, n: int) -> np.ndarray:
    """Lookup table ``id -> index in nodes`` (-1 elsewhere)."""
    table = np.full(n, -1, dtype=np.int64)
    table[nodes] = np.arange(len(nodes))
    return table


class GCL4SR(SequentialRecommender):
    """GCL4SR (see the module docstring for the architecture and the paper/code flags).

    Parameters
    ----------
    n_items : int
        Number of items (ids ``1..n_items``).
    max_len : int
        Longest prefix read (paper: 50).
    hidden : int
        Width d (paper: 64).
    blocks, heads : int
        Transformer layers and heads (paper: 2, 2).
    dropout : float
        Input, transformer and output dropout (paper/code: 0.5).
    attn_dropout : float, optional
        Attention-weight dropout (default: ``dropout``).
    gnn_dropout : float
        Dropout on the gated graph representations and between GNN layers (0.5).
    n_users : int
        Size of the user-embedding table; 0 defers it to :meth:`attach` (the trainer does that).
    sample_sizes : sequence of int
        Neighbours sampled per hop (paper: N = 20, M = 2 hops); the code layout uses hop 1 only.
    window, renorm, scale : int, bool, bool
        WITG construction (:func:`.graph.build_witg`).
    edge_weights : bool
        Use the WITG weights in the GCN (False: all 1, the paper's "w/o edge weights" ablation).
    preset : str
        ``"paper"`` or ``"code"``: default values of the flags below.
    gnn_layout, seq_position, train_gates, gcl, mmd, mmd_kernels, code_init
        Paper/code flags (module docstring); None takes the preset's value.
    tau : float
        Contrastive temperature (0.5).
    mmd_bandwidth : float, optional
        Fixed MMD base bandwidth ρ (default: data-driven).
    lam1, lam2 : float
        Weights of the contrastive and MMD losses (1.0, 0.1).
    combiner : str
        ``"weighted_sum"`` (Eq. 12) or a multi-objective gradient combiner of
        :mod:`fedrec.baselines.gradcraft` (``"gradcraft"``, ``"pcgrad"``, ``"mgda"``,
        ``"equal_weighting"``) applied to ``[CE, λ1 L_GCL, λ2 L_MM]`` by the trainer.
    combiner_params : dict, optional
        Parameters of the combiner.
    lr_step, lr_gamma : int, float
        StepLR schedule of the trainer (every 5 epochs × 0.7).
    bucket_batches : bool
        Trainer option: form batches of similar prefix length (see
        :func:`.trainer.epoch_batches`) instead of uniformly random ones. Much less padding on
        CPU; it changes which sequences share a batch (the contrastive negatives).
    sample_seed : int
        Key of the evaluation-time neighbour sampling.
    """

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.5,
        attn_dropout: float | None = None,
        gnn_dropout: float = 0.5,
        n_users: int = 0,
        sample_sizes: Sequence[int] = (20, 20),
        window: int = 3,
        renorm: bool = True,
        scale: bool = False,
        edge_weights: bool = True,
        preset: str = "paper",
        gnn_layout: str | None = None,
        seq_position: bool | None = None,
        train_gates: bool | None = None,
        gcl: str | None = None,
        tau: float = 0.5,
        mmd: str | None = None,
        mmd_kernels: int | None = None,
        mmd_bandwidth: float | None = None,
        lam1: float = 1.0,
        lam2: float = 0.1,
        code_init: bool | None = None,
        combiner: str = "weighted_sum",
        combiner_params: dict[str, Any] | None = None,
        lr_step: int = 5,
        lr_gamma: float = 0.7,
        bucket_batches: bool = False,
        sample_seed: int = 0,
    ) -> None:
        super().__init__(n_items, max_len, "ce")
        flags = dict(PRESETS[_check_choice("preset", preset, list(PRESETS))])
        given = {"gnn_layout": gnn_layout, "seq_position": seq_position, "train_gates": train_gates,
                 "gcl": gcl, "mmd": mmd, "mmd_kernels": mmd_kernels, "code_init": code_init}
        flags.update({k: v for k, v in given.items() if v is not None})
        self.preset = preset
        self.gnn_layout = _check_choice("gnn_layout", flags["gnn_layout"], ["paper", "code"])
        self.seq_position = bool(flags["seq_position"])
        self.train_gates = bool(flags["train_gates"])
        self.gcl = _check_choice("gcl", flags["gcl"], ["infonce", "ntxent"])
        self.mmd = _check_choice("mmd", flags["mmd"], ["sequence", "batch"])
        self.mmd_kernels = int(flags["mmd_kernels"])
        self.code_init = bool(flags["code_init"])
        sizes = tuple(int(s) for s in sample_sizes)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(f"model.sample_sizes={list(sample_sizes)}: expected two positive "
                             "sizes (neighbours per hop)")
        if self.mmd_kernels < 1:
            raise ValueError(f"model.mmd_kernels={self.mmd_kernels}: expected >= 1")
        for name, value in (("tau", tau), ("lr_gamma", lr_gamma)):
            if value <= 0:
                raise ValueError(f"model.{name}={value}: expected > 0")
        for name, value in (("lam1", lam1), ("lam2", lam2)):
            if value < 0:
                raise ValueError(f"model.{name}={value}: expected >= 0")
        for name, value in (("dropout", dropout), ("gnn_dropout", gnn_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"model.{name}={value}: expected in [0, 1)")
        if mmd_bandwidth is not None and mmd_bandwidth <= 0:
            raise ValueError(f"model.mmd_bandwidth={mmd_bandwidth}: expected > 0")
        if lr_step < 1:
            raise ValueError(f"model.lr_step={lr_step}: expected >= 1")
        if combiner != "weighted_sum":
            from fedrec.baselines.gradcraft import available_combiners

            _check_choice("combiner", combiner, ["weighted_sum", *available_combiners()])
        self.hidden = int(hidden)
        self.sample_sizes = sizes
        self.window, self.renorm, self.scale = int(window), bool(renorm), bool(scale)
        self.edge_weights = bool(edge_weights)
        self.tau, self.mmd_bandwidth = float(tau), mmd_bandwidth
        self.lam1, self.lam2 = float(lam1), float(lam2)
        self.combiner, self.combiner_params = combiner, dict(combiner_params or {})
        self.lr_step, self.lr_gamma = int(lr_step), float(lr_gamma)
        self.bucket_batches = bool(bucket_batches)
        self.sample_seed = int(sample_seed)
        self.graph: WITG | None = None

        d = self.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.user_emb: nn.Embedding | None = nn.Embedding(n_users, d) if n_users > 0 else None
        self.pos_emb = nn.Embedding(max_len, d)
        self.emb_ln = nn.LayerNorm(d, eps=1e-12)
        self.emb_drop = Dropout(dropout)
        attn_p = dropout if attn_dropout is None else attn_dropout
        self.blocks = nn.ModuleList(PostLNBlock(d, heads, dropout, attn_p) for _ in range(blocks))
        self.gcn_lin = nn.Linear(d, d)            # GCN: (Â X) W + b
        self.sage_l = nn.Linear(d, d)             # SAGE: W_l mean_N(h) + b + W_r h_root
        self.sage_r = nn.Linear(d, d, bias=False)
        self.gnn_drop = Dropout(gnn_dropout)
        gate_item, gate_user = torch.empty(d, 1), torch.empty(d, max_len)
        if self.train_gates:
            self.gate_item, self.gate_user = nn.Parameter(gate_item), nn.Parameter(gate_user)
        else:
            self.register_buffer("gate_item", gate_item)
            self.register_buffer("gate_user", gate_user)
        self.fuse = nn.Linear(3 * d, d, bias=False)
        self.att_w1 = nn.Parameter(torch.empty(2 * d, d))
        self.att_w2 = nn.Parameter(torch.empty(d, 1))
        self.att_lin1 = nn.Linear(d, d)
        self.att_lin2 = nn.Linear(d, d, bias=False)
        self.out_drop = Dropout(dropout)
        if self.mmd == "batch":
            self.mmd_proj_seq = nn.Linear(d, 1)   # w_e of the code
            self.mmd_proj_graph = nn.Linear(d, 1)  # w_g of the code
        self._init_parameters()

    # ------------------------------------------------------------------ setup
    def _init_parameters(self) -> None:
        if self.code_init:
            bound = 1.0 / math.sqrt(self.hidden)
            with torch.no_grad():
                for p in self.parameters():
                    p.uniform_(-bound, bound)
        else:
            init_weights(self)
        nn.init.xavier_uniform_(self.gate_item)
        nn.init.xavier_uniform_(self.gate_user)

    def attach(self, train_seqs: Sequence[np.ndarray], n_users: int | None = None) -> WITG:
        """Build the WITG from training sequences and size the user table (if not yet sized).

        Parameters
        ----------
        train_seqs : sequence of numpy.ndarray
            Each user's training items (validation and test items removed).
        n_users : int, optional
            Number of users (default ``len(train_seqs)``).
        """
        self.graph = build_witg(train_seqs, self.n_items, self.window, self.renorm, self.scale)
        n_users = len(train_seqs) if n_users is None else int(n_users)
        if self.user_emb is None or self.user_emb.num_embeddings != n_users:
            emb = nn.Embedding(n_users, self.hidden).to(self.item_emb.weight.device)
            if self.code_init:
                bound = 1.0 / math.sqrt(self.hidden)
                nn.init.uniform_(emb.weight, -bound, bound)
            else:
                nn.init.xavier_normal_(emb.weight)
            self.user_emb = emb
        return self.graph

    def make_trainer(self, ctx: Any) -> Any:
        """The GCL4SR trainer for ``mode: centralized`` (called by the runner)."""
        from fedrec.baselines.gcl4sr.trainer import GCL4SRTrainer

        return GCL4SRTrainer(ctx)

    # ------------------------------------------------------------------ batches
    def make_batch(self, users: np.ndarray | None, inputs: np.ndarray, targets: np.ndarray,
                   key: int) -> Batch:
        """Tensor batch of prefix samples; ``key`` seeds this batch's neighbour sampling."""
        users = np.full(len(inputs), -1) if users is None else np.asarray(users)
        return {"users": to_tensor(users), "inputs": to_tensor(inputs),
                "targets": to_tensor(targets),
                "key": torch.tensor(int(as_key(key).view(np.int64)), dtype=torch.long)}

    def prepare_batch(self, seqs: Sequence[np.ndarray], keys: np.ndarray,
                      users: np.ndarray | None = None) -> Batch:
        """Every prefix of each sequence as one sample (rows = prefixes, not users).

        The sampling key of the batch combines the rows' stream keys; without ``users`` the gate
        has no user term.
        """
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        u, inputs, targets = expand_prefixes(seqs, self.max_len, users)
        if users is None:
            u = np.full(len(targets), -1)
        key = stream_key(np.bitwise_xor.reduce(keys) if len(keys) else np.uint64(0), len(keys))
        return self.make_batch(u, inputs, targets, int(key))

    # ------------------------------------------------------------------ graph views
    def _sample_block(self, items: np.ndarray, size: int, key: np.uint64) -> tuple[np.ndarray, ...]:
        g = self.graph
        slots = sample_neighbors(g, items, size, node_keys(key, items))
        row, col = np.nonzero(slots >= 0)
        edge = slots[row, col]
        w = g.weights[edge] if self.edge_weights else np.ones(len(edge), dtype=np.float32)
        return row, g.indices[edge], w

    def graph_encode(self, items: np.ndarray, key: int | np.uint64, view: int) -> torch.Tensor:
        """GNN representation ``[len(items), d]`` of distinct sorted items in one sampled view."""
        if self.graph is None:
            raise RuntimeError("GCL4SR: no item graph; call model.attach(train_seqs) first")
        dev = self.item_emb.weight.device
        n_nodes = self.n_items + 1
        k1 = stream_key(as_key(key), view, 1)
        r1, src1, w1 = self._sample_block(items, self.sample_sizes[0], k1)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        level1 = _union(n_nodes, items, src1)
        if self.gnn_layout == "code":
            pos = _positions(level1, n_nodes)
            x = self.item_emb(t(level1))
            dst = pos[items]
            h = self.gcn_lin(weighted_gcn(x, np.arange(len(level1)), dst[r1], pos[src1], w1))
            root, h_src, cols = h[t(dst)], h, pos[src1]
        else:
            r2, src2, w2 = self._sample_block(level1, self.sample_sizes[1],
                                              stream_key(as_key(key), view, 2))
            nodes = _union(n_nodes, level1, src2)
            pos = _positions(nodes, n_nodes)
            x = self.item_emb(t(nodes))
            h1 = self.gcn_lin(weighted_gcn(x, pos[level1], r2, pos[src2], w2))
            h1 = self.gnn_drop(F.relu(h1))
            pos1 = _positions(level1, n_nodes)
            root, h_src, cols = h1[t(pos1[items])], h1, pos1[src1]
        mean = mean_aggregate(h_src, len(items), r1, cols)
        return F.normalize(self.sage_l(mean) + self.sage_r(root), dim=-1)

    def graph_view(self, inputs: torch.Tensor, key: int | np.uint64, view: int) -> torch.Tensor:
        """``H`` ``[B, L, d]`` of one sampled view (zeros at padding)."""
        ids = inputs.detach().cpu().numpy()
        items = _union(self.n_items + 1, ids[ids > 0])
        h = self.graph_encode(items, key, view) if len(items) else \
            self.item_emb.weight.new_zeros(0, self.hidden)
        table = torch.cat([h.new_zeros(1, self.hidden), h])
        idx = np.searchsorted(np.concatenate([[0], items]), ids)
        return table[torch.from_numpy(idx).to(inputs.device)]

    # ------------------------------------------------------------------ encoders
    def _positions(self, width: int) -> torch.Tensor:
        return self.pos_emb.weight[self.max_len - width:]

    def sequence_encode(self, inputs: torch.Tensor,
                        input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer states ``H^ℓ`` ``[B, L, d]`` (causal, padding keys masked)."""
        width = inputs.shape[-1]
        if width > self.max_len:
            raise ValueError(f"input width {width} exceeds model.max_len={self.max_len}")
        x = self.item_emb(inputs) if input_embeddings is None else input_embeddings
        if self.seq_position:
            x = x + self._positions(width)
        x = self.emb_drop(self.emb_ln(x))
        allowed = attention_mask(inputs, causal=True)
        for block in self.blocks:
            x = block(x, allowed)
        return x

    def gate(self, h: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """User-specific gate ``σ(H W_g1 + p_u W_g2)`` ``[B, L]`` (Eq. 4)."""
        s = (h @ self.gate_item).squeeze(-1)
        if users is not None and self.user_emb is not None:
            known = users >= 0
            p = self.user_emb(users.clamp_min(0)) * known.unsqueeze(-1).to(h.dtype)
            s = s + (p @ self.gate_user)[:, self.max_len - h.shape[1]:]
        return torch.sigmoid(s)

    def attend(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """AttNet: position-aware soft attention pooling ``[B, d]`` (no softmax, as in the code)."""
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
        pos = self._positions(h.shape[1]).expand(h.shape[0], -1, -1)
        a = torch.tanh(torch.cat([pos, h], -1) @ self.att_w1)
        s = torch.sigmoid(self.att_lin1(a) + self.att_lin2(mean).unsqueeze(1))
        alpha = s @ self.att_w2
        return (alpha * m * h).sum(1)

    def forward_parts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Intermediate representations of a batch (``M``, ``H'``, ``H''``, ``Q'``, ``Q''``...)."""
        inputs = batch["inputs"]
        users = batch.get("users")
        key = as_key(batch["key"] if "key" in batch else stream_key(self.sample_seed, _EVAL_TAG))
        mask = inputs > 0
        h1, h2 = self.graph_view(inputs, key, 0), self.graph_view(inputs, key, 1)
        q1, q2 = h1 * self.gate(h1, users).unsqueeze(-1), h2 * self.gate(h2, users).unsqueeze(-1)
        q1d, q2d = self.gnn_drop(q1), self.gnn_drop(q2)
        seq = self.sequence_encode(inputs)
        fused = self.fuse(torch.cat([seq, q1d, q2d], -1))
        return {"M": self.attend(fused, mask), "fused": fused, "H1": h1, "H2": h2, "Q1": q1,
                "Q2": q2, "Q1_drop": q1d, "Q2_drop": q2d, "mask": mask}

    def encode(self, inputs: torch.Tensor,
               input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Fused per-position states ``[B, L, d]`` (before AttNet pooling; no user term)."""
        if input_embeddings is not None:
            raise NotImplementedError("GCL4SR.encode: input_embeddings is not supported")
        return self.forward_parts({"inputs": inputs})["fused"]

    def last_hidden(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled sequence representation ``M`` ``[B, d]``."""
        batch = {"inputs": seqs} if users is None else {"inputs": seqs, "users": users}
        return self.forward_parts(batch)["M"]

    def scores(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Next-item scores ``[B, n_items + 1]``, column 0 = -inf (``users`` feed the gate)."""
        out = self.last_hidden(seqs, users) @ self.item_embeddings().T
        out[:, 0] = float("-inf")
        return out

    # ------------------------------------------------------------------ losses
    def row_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unweighted loss terms per row ``[B]``: ``main`` (CE), ``gcl``, ``mmd``.

        A term whose weight is 0 is not computed (zeros). The ``"batch"`` MMD is one value per
        batch, repeated over the rows.
        """
        parts = self.forward_parts(batch)
        mask = parts["mask"]
        # softmax over the real items 1..n (column 0 left out rather than set to -inf, which
        # would cost an extra [B, n_items + 1] copy in the backward)
        logits = self.out_drop(parts["M"]) @ self.item_embeddings()[1:].T
        terms = {"main": F.cross_entropy(logits, batch["targets"] - 1, reduction="none")}
        zeros = logits.new_zeros(len(logits))
        if self.lam1 > 0:
            m = mask.unsqueeze(-1).to(logits.dtype)
            cnt = m.sum(1).clamp_min(1)
            z1, z2 = (parts["H1"] * m).sum(1) / cnt, (parts["H2"] * m).sum(1) / cnt
            terms["gcl"] = (info_nce if self.gcl == "infonce" else nt_xent)(z1, z2, self.tau)
        else:
            terms["gcl"] = zeros
        if self.lam2 > 0:
            terms["mmd"] = self._mmd(batch["inputs"], parts)
        else:
            terms["mmd"] = zeros
        return terms

    def _mmd(self, inputs: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = parts["mask"]
        e0 = self.item_emb(inputs)
        if self.mmd == "sequence":
            return sum(mmd_per_sequence(e0, parts[q], mask, self.mmd_kernels, self.mmd_bandwidth)
                       for q in ("Q1", "Q2"))
        m = mask.to(e0.dtype)
        se = self.mmd_proj_seq(e0).squeeze(-1) * m
        out = sum(mmd_across_batch(se, self.mmd_proj_graph(parts[q]).squeeze(-1) * m,
                                   self.mmd_kernels, self.mmd_bandwidth)
                  for q in ("Q1_drop", "Q2_drop"))
        return out.expand(len(inputs))

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unweighted batch losses ``{"main", "gcl", "mmd"}`` (means over rows)."""
        return {k: v.mean() for k, v in self.row_terms(batch).items()}

    def weighted_terms(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"main": CE, "gcl": λ1 L_GCL, "mmd": λ2 L_MM}``, zero-weight terms dropped."""
        out = {"main": terms["main"]}
        if self.lam1 > 0:
            out["gcl"] = self.lam1 * terms["gcl"]
        if self.lam2 > 0:
            out["mmd"] = self.lam2 * terms["mmd"]
        return out

    def row_losses(self, batch: Batch, dense: bool = False) -> torch.Tensor:
        """``CE + λ1 L_GCL + λ2 L_MM`` per row ``[B]``; their mean is :meth:`loss`."""
        return sum(self.weighted_terms(self.row_terms(batch)).values())

    def loss(self, batch: Batch) -> torch.Tensor:
        """The joint objective of Eq. 12 on a batch."""
        return sum(self.weighted_terms(self.loss_terms(batch)).values())
