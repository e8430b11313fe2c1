"""Multi-task ranking models over categorical feature embeddings: Shared-Bottom and 1-level PLE.

* Shared-Bottom -- R. Caruana, "Multitask Learning", Machine Learning 28, 1997: one shared MLP
  bottom, one MLP tower per task.
* PLE -- H. Tang, J. Liu, M. Zhao, X. Gong, "Progressive Layered Extraction (PLE): A Novel
  Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020. Implemented
  with one extraction level (i.e. CGC): shared experts plus task-specific experts, one softmax
  gate per task over [its specific experts, the shared experts], then a tower per task. This is
  the backbone GradCraft (Bai et al., KDD 2024, arXiv:2407.19682) uses, with one shared and one
  specific expert.

Input: ``x_cat: LongTensor[B, F]`` (one id per categorical field) and optionally
``x_dense: FloatTensor[B, D]`` (e.g. a multi-hot genre vector), which is projected to the
embedding size and treated as one more field. ``forward`` returns **logits** ``[B, T]``; the
sigmoid of the paper's towers is applied by :meth:`MultiTaskModel.predict_proba`, and training
uses ``binary_cross_entropy_with_logits`` (the numerically stable form of BCE on a sigmoid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fedrec.errors import ConfigError

__all__ = ["MODELS", "PLE", "MultiTaskModel", "SharedBottom", "build_model", "mlp"]


def mlp(in_dim: int, units: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """ReLU MLP ``in_dim -> units[0] -> ... -> units[-1]`` with dropout after each activation.

    Parameters
    ----------
    in_dim : int
        Input width.
    units : Sequence[int]
        Hidden widths (may be empty: identity).
    dropout : float
        Dropout probability.

    Returns
    -------
    nn.Sequential
        The network.
    """
    layers: list[nn.Module] = []
    for width in units:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class FeatureEmbedding(nn.Module):
    """Concatenated per-field embeddings plus an optional linear projection of dense features."""

    def __init__(self, vocab_sizes: Sequence[int], n_dense: int, dim: int, init_std: float) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(v), dim) for v in vocab_sizes)
        for table in self.tables:
            nn.init.normal_(table.weight, std=init_std)
        self.dense = nn.Linear(n_dense, dim, bias=False) if n_dense > 0 else None
        self.out_dim = dim * (len(vocab_sizes) + (1 if n_dense > 0 else 0))

    def forward(self, x_cat: Tensor, x_dense: Tensor | None = None) -> Tensor:
        parts = [table(x_cat[:, k]) for k, table in enumerate(self.tables)]
        if self.dense is not None:
            if x_dense is None:
                raise ValueError("x_dense: the model was built with dense features; got None")
            parts.append(self.dense(x_dense))
        return torch.cat(parts, dim=1)


class MultiTaskModel(nn.Module):
    """Base class: ``forward(x_cat, x_dense) -> logits [B, T]``."""

    num_tasks: int

    def predict_proba(self, x_cat: Tensor, x_dense: Tensor | None = None) -> Tensor:
        """Task probabilities ``sigmoid(logits)``, shape ``[B, T]``."""
        return torch.sigmoid(self.forward(x_cat, x_dense))


def _check_common(vocab_sizes: Sequence[int], num_tasks: int, dim: int, dropout: float) -> None:
    if len(vocab_sizes) == 0 or any(int(v) < 1 for v in vocab_sizes):
        raise ConfigError(f"vocab_sizes: expected one or more sizes >= 1, got {list(vocab_sizes)}")
    if num_tasks < 1:
        raise ConfigError(f"num_tasks: expected >= 1, got {num_tasks}")
    if dim < 1:
        raise ConfigError(f"embedding_dim: expected >= 1, got {dim}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout: expected a number in [0, 1), got {dropout}")


def _towers(in_dim: int, units: Sequence[int], dropout: float, num_tasks: int) -> nn.ModuleList:
    """One tower per task: ``mlp(in_dim, units)`` followed by a linear layer to one logit."""
    out = units[-1] if units else in_dim
    return nn.ModuleList(
        nn.Sequential(mlp(in_dim, units, dropout), nn.Linear(out, 1)) for _ in range(num_tasks)
    )


class SharedBottom(MultiTaskModel):
    """Shared-Bottom multi-task model (embeddings -> shared MLP -> one MLP tower + logit per task).

    Parameters
    ----------
    vocab_sizes : Sequence[int]
        Vocabulary size of each categorical field.
    num_tasks : int
        Number of binary tasks.
    n_dense : int
        Width of the dense feature vector (0: none).
    embedding_dim : int
        Embedding size per field.
    bottom_units, tower_units : Sequence[int]
        Hidden widths of the shared bottom and of each tower.
    dropout : float
        Dropout in the MLPs.
    init_std : float
        Std of the normal initialisation of the embeddings.
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        num_tasks: int,
        n_dense: int = 0,
        embedding_dim: int = 16,
        bottom_units: Sequence[int] = (128, 64),
        tower_units: Sequence[int] = (32,),
        dropout: float = 0.0,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        _check_common(vocab_sizes, num_tasks, embedding_dim, dropout)
        self.num_tasks = num_tasks
        self.embed = FeatureEmbedding(vocab_sizes, n_dense, embedding_dim, init_std)
        self.bottom = mlp(self.embed.out_dim, bottom_units, dropout)
        width = bottom_units[-1] if bottom_units else self.embed.out_dim
        self.towers = _towers(width, tower_units, dropout, num_tasks)

    def forward(self, x_cat: Tensor, x_dense: Tensor | None = None) -> Tensor:
        h = self.bottom(self.embed(x_cat, x_dense))
        return torch.cat([tower(h) for tower in self.towers], dim=1)


class PLE(MultiTaskModel):
    """One-level PLE (CGC): shared + task-specific MLP experts, softmax gates, MLP towers.

    Task ``t``'s gate is a single linear layer on the input embedding followed by a softmax over
    its ``num_specific_experts`` own experts and the ``num_shared_experts`` shared ones; the
    gated mixture feeds task ``t``'s tower. With one level no shared gate is needed.

    Parameters
    ----------
    vocab_sizes : Sequence[int]
        Vocabulary size of each categorical field.
    num_tasks : int
        Number of binary tasks.
    n_dense : int
        Width of the dense feature vector (0: none).
    embedding_dim : int
        Embedding size per field.
    expert_units, tower_units : Sequence[int]
        Hidden widths of every expert and every tower (``expert_units`` must be non-empty).
    num_shared_experts, num_specific_experts : int
        Experts shared by all tasks / owned by each task.
    dropout : float
        Dropout in the MLPs.
    init_std : float
        Std of the normal initialisation of the embeddings.
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        num_tasks: int,
        n_dense: int = 0,
        embedding_dim: int = 16,
        expert_units: Sequence[int] = (128, 64),
        tower_units: Sequence[int] = (32,),
        num_shared_experts: int = 1,
        num_specific_experts: int = 1,
        dropout: float = 0.0,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        _check_common(vocab_sizes, num_tasks, embedding_dim, dropout)
        if not expert_units:
            raise ConfigError("expert_units: expected at least one hidden width, got []")
        if num_shared_experts < 1 or num_specific_experts < 1:
            raise ConfigError(
                "num_shared_experts/num_specific_experts: expected >= 1, "
                f"got {num_shared_experts}/{num_specific_experts}"
            )
        self.num_tasks = num_tasks
        self.embed = FeatureEmbedding(vocab_sizes, n_dense, embedding_dim, init_std)
        in_dim = self.embed.out_dim
        width = expert_units[-1]
        self.shared_experts = nn.ModuleList(
            mlp(in_dim, expert_units, dropout) for _ in range(num_shared_experts)
        )
        self.specific_experts = nn.ModuleList(
            nn.ModuleList(mlp(in_dim, expert_units, dropout) for _ in range(num_specific_experts))
            for _ in range(num_tasks)
        )
        self.gates = nn.ModuleList(
            nn.Linear(in_dim, num_shared_experts + num_specific_experts) for _ in range(num_tasks)
        )
        self.towers = _towers(width, tower_units, dropout, num_tasks)

    def gate_weights(self, x_cat: Tensor, x_dense: Tensor | None = None) -> Tensor:
        """Softmax gate weights ``[B, T, n_specific + n_shared]`` (rows sum to 1)."""
        e = self.embed(x_cat, x_dense)
        return torch.stack([torch.softmax(g(e), dim=-1) for g in self.gates], dim=1)

    def forward(self, x_cat: Tensor, x_dense: Tensor | None = None) -> Tensor:
        e = self.embed(x_cat, x_dense)
        shared = [expert(e) for expert in self.shared_experts]
        logits = []
        for t in range(self.num_tasks):
            outs = torch.stack([expert(e) for expert in self.specific_experts[t]] + shared, dim=1)
            gate = torch.softmax(self.gates[t](e), dim=-1).unsqueeze(-1)  # [B, E, 1]
            logits.append(self.towers[t]((gate * outs).sum(dim=1)))
        return torch.cat(logits, dim=1)


MODELS: dict[str, type[MultiTaskModel]] = {"shared_bottom": SharedBottom, "ple": PLE}


def build_model(
    name: str,
    vocab_sizes: Sequence[int],
    num_tasks: int,
    n_dense: int = 0,
    embedding_dim: int = 16,
    hidden_units: Sequence[int] = (128, 64),
    tower_units: Sequence[int] = (32,),
    dropout: float = 0.0,
) -> MultiTaskModel:
    """Build a multi-task model by name.

    Parameters
    ----------
    name : {"shared_bottom", "ple"}
        Architecture.
    vocab_sizes, num_tasks, n_dense, embedding_dim, tower_units, dropout
        See :class:`SharedBottom` / :class:`PLE`.
    hidden_units : Sequence[int]
        Bottom widths (shared-bottom) or expert widths (PLE).

    Returns
    -------
    MultiTaskModel
        The model.

    Raises
    ------
    ConfigError
        If ``name`` is unknown or a size is invalid.
    """
    if name == "shared_bottom":
        return SharedBottom(
            vocab_sizes, num_tasks, n_dense, embedding_dim, hidden_units, tower_units, dropout
        )
    if name == "ple":
        return PLE(
            vocab_sizes,
            num_tasks,
            n_dense,
            embedding_dim,
            expert_units=hidden_units,
            tower_units=tower_units,
            dropout=dropout,
        )
    raise ConfigError(f"model: unknown name {name!r}; expected one of {sorted(MODELS)}")
