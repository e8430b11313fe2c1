"""Client update functions: the single-client form and the batched (vectorised) form.

Protocols (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of Deep Networks
from Decentralized Data"):

* **FedSGD**: the update is the gradient of the client's loss (the mean over its own target
  positions) at the global parameters: one forward/backward, no local step. This is the
  DV-FSR setting (each user is a client holding one sequence).
* **FedAvg**: the client runs ``local_epochs`` SGD steps (step ``local_lr``) on its sequence,
  starting from the global parameters, and returns ``local - global``.

Both forms draw every random choice (negatives, cloze masks) from the client's own stream
``stream_key(seed, round, client_id, local_epoch)``, so a client's update is the same whether
computed alone (:func:`client_update`, used by the Flower ClientApp) or inside a batch
(:func:`batched_updates` / :func:`combined_fedsgd_gradient`, used by the local engine).

Dropout masks come from torch's generator. The batched forms draw one mask per client from the
engine's (seeded, checkpointed) global stream, so the local engine repeats exactly. A single
client computed on its own (the Flower ClientApp, on whichever Ray worker gets it) runs inside
:func:`client_torch_rng`, which seeds torch from ``(seed, round, client_id)``, so its update
does not depend on what that worker computed before. The two engines therefore agree exactly
without dropout; with dropout each repeats itself but draws different masks from the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call, vmap

from fedrec.data.buckets import length_buckets
from fedrec.data.random import stream_key
from fedrec.models import SequentialRecommender
from fedrec.models.base import load_params
from fedrec.models.transformer import vmap_safe_attention
from fedrec.rowsparse import RowSparse

Params = dict[str, torch.Tensor]
Stacked = dict[str, torch.Tensor | RowSparse]


@dataclass(frozen=True)
class RoundConfig:
    """What a client is told about the round.

    Parameters
    ----------
    round : int
        Global round index (0-based, across epochs).
    epoch : int
        Epoch (pass over all clients) the round belongs to.
    protocol : str
        ``"fedsgd"`` or ``"fedavg"``.
    seed : int
        Experiment seed.
    local_epochs : int
        FedAvg local epochs.
    local_lr : float
        FedAvg local SGD step size.
    """

    round: int
    epoch: int
    protocol: str = "fedsgd"
    seed: int = 0
    local_epochs: int = 1
    local_lr: float = 0.01


@dataclass
class Update:
    """What a client returns: ``params`` maps parameter names to a gradient (FedSGD) or a
    parameter delta (FedAvg)."""

    params: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def num_examples(seq: np.ndarray) -> int:
    """Training examples of a client: the next-item targets in its sequence (at least 1)."""
    return max(1, len(seq) - 1)


def client_keys(rc: RoundConfig, client_ids: np.ndarray | Sequence[int],
                local_epoch: int = 0) -> np.ndarray:
    """Per-client random stream keys for a round (and local epoch)."""
    return stream_key(rc.seed, rc.round, np.asarray(client_ids, dtype=np.int64), local_epoch)


#: Tag mixed into the torch seed of a single benign client's computation (its dropout masks);
#: attackers use their own tag (:data:`attacks.base.TORCH_STREAM_TAG`).
TORCH_STREAM_TAG = 0xC11E7


def client_torch_seed(rc: RoundConfig, client_id: int) -> int:
    """Torch seed of benign client ``client_id``'s computation in round ``rc.round``.

    Parameters
    ----------
    rc : RoundConfig
        Round settings (``seed`` and ``round`` are used).
    client_id : int
        The client's id.

    Returns
    -------
    int
        A 64-bit seed, a function of ``(rc.seed, rc.round, client_id)`` only.
    """
    return int(stream_key(int(rc.seed), int(rc.round), int(client_id), TORCH_STREAM_TAG))


@contextmanager
def client_torch_rng(rc: RoundConfig, client_id: int) -> Iterator[None]:
    """Run a single client's computation with torch seeded by :func:`client_torch_seed`.

    The caller's torch CPU generator state is restored on exit
    (:func:`torch.random.fork_rng`), so what a process computed before or after does not
    change the client's dropout masks, and the client does not change the process's stream.

    Parameters
    ----------
    rc : RoundConfig
        Round settings.
    client_id : int
        The client's id.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(client_torch_seed(rc, client_id))
        yield


# ----------------------------------------------------------------------------- single client


def client_update(
    model: SequentialRecommender,
    global_params: Mapping[str, torch.Tensor],
    seq: np.ndarray,
    client_id: int,
    rc: RoundConfig,
) -> Update:
    """Update of one client (plain autograd on a model holding the global parameters).

    Negatives and masks come from the client's stream keys; dropout uses torch's current
    generator (wrap the call in :func:`client_torch_rng` to make it a function of the client
    and round alone, as the Flower ClientApp does).

    Parameters
    ----------
    model : SequentialRecommender
        A model instance; its parameters are overwritten with ``global_params``.
    global_params : mapping
        Current global parameters.
    seq : numpy.ndarray
        The client's training sequence.
    client_id : int
        The client's id (selects its random stream).
    rc : RoundConfig
        Round settings.
    """
    load_params(model, global_params)
    model.train()
    if rc.protocol == "fedsgd":
        batch = model.prepare_batch([seq], client_keys(rc, [client_id]))
        model.zero_grad(set_to_none=True)
        loss = model(batch)[0]
        loss.backward()
        grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in model.named_parameters()}
        return Update(grads, num_examples(seq), {"loss": loss.item()})
    losses = []
    for e in range(rc.local_epochs):
        batch = model.prepare_batch([seq], client_keys(rc, [client_id], e))
        model.zero_grad(set_to_none=True)
        loss = model(batch)[0]
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(rc.local_lr * p.grad)
    delta = {n: (p.detach() - global_params[n]).clone() for n, p in model.named_parameters()}
    return Update(delta, num_examples(seq), {"loss": float(np.mean(losses))})


# ----------------------------------------------------------------------------- batched


def combined_fedsgd_gradient(
    model: SequentialRecommender,
    global_params: Mapping[str, torch.Tensor],
    seqs: Sequence[np.ndarray],
    client_ids: np.ndarray,
    coefficients: torch.Tensor,
    rc: RoundConfig,
) -> tuple[Params, torch.Tensor]:
    """``sum_i c_i * grad L_i`` for many FedSGD clients, batched.

    This is all a linear aggregation rule (sum, mean, weighted mean) needs. The clients are
    split into a few length buckets (:func:`fedrec.data.buckets.length_buckets`), each one
    forward/backward, so short sequences are not padded to the longest one of the round.

    Returns
    -------
    grads : dict
        The combined gradient.
    losses : Tensor
        Each client's loss ``[n]`` (in input order).
    """
    params = {n: p.detach().requires_grad_(True) for n, p in global_params.items()}
    names = list(params)
    model.train()
    ids = np.asarray(client_ids)
    coefficients = coefficients.to(torch.float32)
    out = {n: torch.zeros_like(params[n]) for n in names}
    losses = torch.zeros(len(seqs))
    lengths = np.array([len(s) - 1 for s in seqs])
    for group in length_buckets(lengths, model.max_len):
        batch = model.prepare_batch([seqs[i] for i in group], client_keys(rc, ids[group]))
        group_losses = functional_call(model, params, (batch,))
        total = (group_losses * coefficients[torch.from_numpy(group)]).sum()
        grads = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                out[n] += g
        losses[torch.from_numpy(group)] = group_losses.detach()
    return out, losses


def _row_loss_fn(model: SequentialRecommender):
    def loss(params: Params, row: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.unsqueeze(0) for k, v in row.items()}
        return functional_call(model, params, (batch,), {"dense": True})[0]

    return loss


def _pad_batch(batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Left-pad every tensor of a batch to ``width`` columns (dim 1)."""
    out = {}
    for k, v in batch.items():
        pad = width - v.shape[1]
        if pad > 0:
            v = torch.cat([v.new_zeros((v.shape[0], pad, *v.shape[2:])), v], dim=1)
        out[k] = v
    return out


def sparse_item_support(model: SequentialRecommender) -> str | None:
    """Why ``model``'s item-table updates cannot be computed row-sparse (None when they can).

    They can when the model declares :attr:`~fedrec.models.base.SequentialRecommender.
    sparse_item_grads` (its item table is read only by looking up the batch's item ids), uses
    the BCE loss (a full softmax touches every row) and has exactly one item table.
    """
    if not getattr(model, "sparse_item_grads", False):
        return f"{type(model).__name__} does not declare sparse_item_grads"
    if model.loss_type != "bce":
        return f"model.loss={model.loss_type!r}: a full softmax touches every item row"
    if len(tuple(model.item_param_names)) != 1:
        return f"{type(model).__name__} has item tables {tuple(model.item_param_names)}"
    return None


def _local_item_ids(batches: Sequence[dict[str, torch.Tensor]], keys: Sequence[str]
                    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Per row, the item ids it reads, and the batches with ids renumbered into that list.

    Returns
    -------
    uids : Tensor
        ``int64[B, m]``: row ``b``'s distinct item ids in increasing order, 0 (padding) first;
        positions past the row's count hold 0 and are never read.
    local : list of dict
        The batches with every entry of ``keys`` replaced by positions in ``uids[b]`` (0 stays
        0, so padding masks are unchanged).
    """
    b = batches[0][keys[0]].shape[0]
    parts = [torch.zeros(b, 1, dtype=torch.long)]
    parts += [batch[k].reshape(b, -1).long() for batch in batches for k in keys if k in batch]
    srt = torch.sort(torch.cat(parts, dim=1), dim=1).values
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    rank = torch.cumsum(first, dim=1) - 1
    uids = torch.zeros(b, int(rank.max()) + 1, dtype=torch.long)
    row = torch.arange(b)[:, None].expand_as(srt)
    uids[row[first], rank[first]] = srt[first]
    local = []
    for batch in batches:
        out = dict(batch)
        for k in keys:
            if k in batch:
                v = batch[k]
                pos = torch.searchsorted(srt, v.reshape(b, -1).long().contiguous())
                out[k] = rank.gather(1, pos).reshape(v.shape).to(v.dtype)
        local.append(out)
    return uids, local


def batched_updates(
    model: SequentialRecommender,
    global_params: Mapping[str, torch.Tensor],
    seqs: Sequence[np.ndarray],
    client_ids: np.ndarray,
    rc: RoundConfig,
    chunk_size: int = 64,
    sparse_items: bool = False,
) -> tuple[Stacked, torch.Tensor]:
    """Every client's update, stacked: ``name -> Tensor[n, *shape]``.

    Per-client gradients come from ``torch.func.vmap(grad(loss))`` with ``functional_call``;
    FedAvg runs its local SGD steps inside the vmapped function, so all clients train at once.
    Clients are processed in length buckets, in chunks of at most ``chunk_size`` to bound
    memory; rows come back in input order.

    With ``sparse_items`` (a model for which :func:`sparse_item_support` is None), each client
    differentiates a local copy of only the item rows its batch reads (ids renumbered into that
    list), so its item-table update is those rows: the table comes back as a
    :class:`~fedrec.rowsparse.RowSparse` and memory is ``O(touched rows)``, not
    ``O(clients x items)``. The values are those of the dense path (the same sums of the same
    per-position terms; float32 may round them in another order).

    Returns
    -------
    updates : dict
        Stacked gradients (FedSGD) or deltas (FedAvg); the item table a RowSparse with
        ``sparse_items``.
    losses : Tensor
        Each client's (mean local) loss ``[n]``.

    Raises
    ------
    ValueError
        If ``sparse_items`` is set for a model that does not support it.
    """
    base = {n: p.detach() for n, p in global_params.items()}
    item_key = None
    if sparse_items:
        why = sparse_item_support(model)
        if why is not None:
            raise ValueError(f"sparse item updates: {why}")
        item_key = tuple(model.item_param_names)[0]
    loss_fn = _row_loss_fn(model)
    value_and_grad = torch.func.grad_and_value(loss_fn)
    model.train()
    stacked: Stacked = {n: torch.empty((len(seqs), *p.shape), dtype=p.dtype)
                        for n, p in base.items() if n != item_key}
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    losses = torch.empty(len(seqs))
    lengths = np.array([len(s) - 1 for s in seqs])
    chunks = [g[i:i + chunk_size] for g in length_buckets(lengths, model.max_len)
              for i in range(0, len(g), chunk_size)]
    with vmap_safe_attention():
        for rows in chunks:
            part = [seqs[i] for i in rows]
            ids = np.asarray(client_ids)[rows]
            n_epochs = 1 if rc.protocol == "fedsgd" else rc.local_epochs
            batches = [model.prepare_batch(part, client_keys(rc, ids, e)) for e in range(n_epochs)]
            params, dims = base, None
            if item_key is not None:
                uids, batches = _local_item_ids(batches, model.item_id_keys)
                params = {**base, item_key: base[item_key][uids]}  # [B, m, d] per-client rows
                dims = {n: (0 if n == item_key else None) for n in base}
            if rc.protocol == "fedsgd":
                out, loss = vmap(value_and_grad, in_dims=(dims, 0),
                                 randomness="different")(params, batches[0])
            else:
                width = max(b["inputs"].shape[1] for b in batches)
                stacked_batches = {k: torch.stack([_pad_batch(b, width)[k] for b in batches], dim=1)
                                   for k in batches[0]}

                def local_train(start: Params, row_batches: dict[str, torch.Tensor]
                                ) -> tuple[Params, torch.Tensor]:
                    p = dict(start)
                    total = torch.zeros(())
                    for e in range(rc.local_epochs):
                        row = {k: v[e] for k, v in row_batches.items()}
                        g, loss = value_and_grad(p, row)
                        p = {n: p[n] - rc.local_lr * g[n] for n in p}
                        total = total + loss
                    return {n: p[n] - start[n] for n in p}, total / rc.local_epochs

                out, loss = vmap(local_train, in_dims=(dims, 0),
                                 randomness="different")(params, stacked_batches)
            index = torch.from_numpy(np.asarray(rows))
            for n in stacked:  # write each chunk straight into its rows: no concatenation copy
                stacked[n].index_copy_(0, index, out[n].detach())
            if item_key is not None:
                pieces.append((index[:, None].expand_as(uids), uids, out[item_key].detach()))
            losses.index_copy_(0, index, loss.detach())
    if item_key is not None:
        table = base[item_key]
        if not pieces:  # no client: an empty stack
            pieces = [(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long),
                       table.new_zeros((0, 1, *table.shape[1:])))]
        owners, row_ids, values = (torch.cat([p[j].reshape(-1, *p[j].shape[2:]) for p in pieces])
                                   for j in range(3))
        # the padding positions of uids repeat row 0 with a zero update; build drops zero rows,
        # and row 0 keeps only its first (real) entry per client
        first = torch.ones_like(row_ids, dtype=torch.bool)
        first[1:] = (row_ids[1:] != 0) | (owners[1:] != owners[:-1])
        stacked[item_key] = RowSparse.build(owners[first], row_ids[first], values[first],
                                            len(seqs), table.shape[0])
    return stacked, losses
