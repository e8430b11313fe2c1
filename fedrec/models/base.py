"""The model contract shared by every sequential recommender in fedrec.

A model is a plain :class:`torch.nn.Module` (so ``torch.func.functional_call`` works on its
parameters) with four methods:

* ``prepare_batch(seqs, keys)`` turns users' training sequences into a dict of tensors (inputs,
  targets, sampled negatives or cloze masks). All randomness comes from the per-row stream keys
  (:mod:`fedrec.data.random`), so a user's batch row is the same alone or in any batch.
* ``row_losses(batch)`` returns one loss per row (the mean over that row's target positions):
  the loss of one federated client.
* ``loss(batch)`` is the centralized objective, the mean over all target positions of the batch.
* ``scores(seqs)`` returns next-item scores ``[B, n_items + 1]`` from the last position of
  left-padded histories; column 0 (padding) is ``-inf``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.data.batching import pad_left, to_tensor
from fedrec.data.random import uniform_ints

Batch = dict[str, torch.Tensor]

LOSSES = ("bce", "ce")


class SequentialRecommender(nn.Module, ABC):
    """Base class of the sequential recommenders (see module docstring for the contract).

    Parameters
    ----------
    n_items : int
        Number of items; ids run ``1..n_items`` and 0 is padding.
    max_len : int
        Longest history the model reads (older items are dropped).
    loss_type : str
        ``"bce"`` (binary cross-entropy against ``n_neg`` uniformly sampled negatives per
        position, as in the SASRec paper) or ``"ce"`` (full-softmax cross-entropy).
    n_neg : int
        Negatives per position for ``"bce"``.
    """

    item_param_names: tuple[str, ...] = ("item_emb.weight",)
    #: How the BCE loss of one position combines its positive and ``n_neg`` negative logits:
    #: ``"sum"`` (positive term + negative terms; the SASRec paper and its PyTorch port) or
    #: ``"mean"`` (their mean, i.e. BCE averaged over all 1 + n_neg logits, as in DV-FSR's
    #: reference code). It rescales the loss by 1/(1 + n_neg): irrelevant for Adam, but it
    #: sets the size of benign FedSGD gradients relative to an attacker's.
    bce_reduction: str = "sum"
    #: Batch entries that hold item ids (0 = padding). A model whose item table is read only by
    #: looking up these ids under the BCE loss (:attr:`sparse_item_grads`) lets the client
    #: update compute its item-table gradient on the touched rows alone
    #: (:func:`clients.update.batched_updates` with ``sparse_items``).
    item_id_keys: tuple[str, ...] = ("inputs", "targets", "negatives")
    #: see :attr:`item_id_keys`; set by models that satisfy it
    sparse_item_grads: bool = False

    def __init__(self, n_items: int, max_len: int, loss_type: str = "bce", n_neg: int = 1) -> None:
        super().__init__()
        if loss_type not in LOSSES:
            raise ValueError(f"model.loss={loss_type!r}: expected one of {LOSSES}")
        self.n_items = int(n_items)
        self.max_len = int(max_len)
        self.loss_type = loss_type
        self.n_neg = int(n_neg)

    # ------------------------------------------------------------------ encoder
    @abstractmethod
    def encode(self, inputs: torch.Tensor, input_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` for left-padded item ids ``[B, L]``.

        ``input_embeddings`` ``[B, L, d]``, when given, replaces the lookup of ``inputs`` in the
        input item-embedding table (``inputs`` still marks padding).
        """

    def item_embeddings(self) -> torch.Tensor:
        """Output item embedding matrix ``[n_items + 1, d]`` used for scoring."""
        return self.item_emb.weight[: self.n_items + 1]

    def output_bias(self) -> torch.Tensor | None:
        """Optional per-item output bias ``[n_items + 1]``."""
        return None

    # ------------------------------------------------------------------ batches
    def prepare_batch(self, seqs: Sequence[np.ndarray], keys: np.ndarray) -> Batch:
        """Next-item training batch from full training sequences.

        Position ``t`` of ``seq[:-1]`` predicts ``seq[t + 1]``; negatives are drawn per row from
        that row's random stream, anchored at the right end so that the batch width does not
        change them.
        """
        inputs = pad_left([s[:-1] for s in seqs], self.max_len)
        targets = pad_left([s[1:] for s in seqs], self.max_len, width=inputs.shape[1])
        batch = {"inputs": to_tensor(inputs), "targets": to_tensor(targets)}
        if self.loss_type == "bce":
            batch["negatives"] = to_tensor(self._negatives(keys, targets))
        return batch

    def _negatives(self, keys: np.ndarray, targets: np.ndarray) -> np.ndarray:
        width = targets.shape[1]
        neg = uniform_ints(keys, (self.max_len, self.n_neg), 1, self.n_items + 1)[:, -width:]
        clash = neg == targets[:, :, None]
        return np.where(clash, neg % self.n_items + 1, neg)

    # ------------------------------------------------------------------ losses
    def _logits_at(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        emb = F.embedding(items, self.item_embeddings())
        if items.dim() == hidden.dim() - 1:  # one item per position
            out = (hidden * emb).sum(-1)
        else:  # several items per position (sampled negatives)
            out = (hidden.unsqueeze(-2) * emb).sum(-1)
        bias = self.output_bias()
        return out if bias is None else out + bias[items]

    def position_losses(self, batch: Batch, dense: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss at every position ``[B, L]`` and the target mask ``[B, L]``.

        ``dense=True`` avoids data-dependent shapes (required under ``torch.func.vmap``);
        otherwise full-softmax losses are computed only at target positions.
        """
        hidden = self.encode(batch["inputs"])
        targets = batch["targets"]
        mask = targets > 0
        if self.loss_type == "bce":
            pos = self._logits_at(hidden, targets)
            neg = self._logits_at(hidden, batch["negatives"])
            loss = F.softplus(-pos) + F.softplus(neg).sum(-1)
            if self.bce_reduction == "mean":
                loss = loss / (1 + neg.shape[-1])
            return loss * mask, mask
        weight = self.item_embeddings()
        bias = self.output_bias()
        if dense:
            logits = hidden @ weight.T
            if bias is not None:
                logits = logits + bias
            loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            return loss * mask, mask
        idx = mask.nonzero(as_tuple=True)
        logits = hidden[idx] @ weight.T
        if bias is not None:
            logits = logits + bias
        flat = F.cross_entropy(logits, targets[idx], reduction="none")
        loss = torch.zeros_like(targets, dtype=flat.dtype).index_put(idx, flat)
        return loss, mask

    def row_losses(self, batch: Batch, dense: bool = False) -> torch.Tensor:
        """One loss per row: the mean over the row's target positions (a client's loss)."""
        loss, mask = self.position_losses(batch, dense=dense)
        return loss.sum(-1) / mask.sum(-1).clamp_min(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Centralized objective: mean over all target positions in the batch."""
        loss, mask = self.position_losses(batch)
        return loss.sum() / mask.sum().clamp_min(1)

    def forward(self, batch: Batch | torch.Tensor, dense: bool = False) -> torch.Tensor:
        """``row_losses(batch)`` for a batch dict, ``scores(seqs)`` for an id tensor.

        Having ``forward`` dispatch lets ``torch.func.functional_call(model, params, (x,))``
        evaluate either with substituted parameters.
        """
        if isinstance(batch, dict):
            return self.row_losses(batch, dense=dense)
        return self.scores(batch)

    # ------------------------------------------------------------------ scoring
    def last_hidden(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden state that predicts the next item after each left-padded history."""
        return self.encode(seqs)[:, -1]

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Next-item scores ``[B, n_items + 1]``; column 0 (padding) is ``-inf``."""
        h = self.last_hidden(seqs)
        out = h @ self.item_embeddings().T
        bias = self.output_bias()
        if bias is not None:
            out = out + bias
        out = out.clone()
        out[:, 0] = float("-inf")
        return out

    def histories_to_tensor(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Left-pad raw histories to the model's input length."""
        return to_tensor(pad_left(histories, self.max_len))


def load_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``params`` (name → tensor) into ``model``'s parameters in place."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def init_weights(module: nn.Module) -> None:
    """Xavier-normal for matrices, zeros for biases, ones for LayerNorm scales."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            nn.init.xavier_normal_(p)
        elif name.endswith("bias") or "bias" in name:
            nn.init.zeros_(p)
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
