"""A tiny unified autoregressive model over visual and text tokens, LaVIT's "visual tokens as a
foreign language" at toy scale.

LaVIT (Jin et al., ICLR 2024, arXiv 2309.04669) extends LLaMA's vocabulary by the codebook and
two specials and trains one next-token loss over image-text sequences in both orders
(image -> text and text -> image) [CODE / RECALL]. Here the language model is a small causal
transformer trained from scratch [INF], the text is the template caption as words (a closed
vocabulary built from the captions), and a sequence is either

* captioning: ``[BOS] [IMG] v_1 .. v_k [/IMG] w_1 .. w_m [EOS]``, or
* generation: ``[BOS] w_1 .. w_m [IMG] v_1 .. v_k [/IMG] [EOS]``,

with the loss on every next token. :meth:`UnifiedLM.caption` decodes greedily after
``[/IMG]``; :meth:`UnifiedLM.generate_image` samples visual tokens (only codes and ``[/IMG]``
allowed, seeded) after ``[IMG]`` until ``[/IMG]`` or ``max_tokens``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

PAD, BOS, EOS, IMG, IMG_END = 0, 1, 2, 3, 4
N_SPECIAL = 5


class Vocabulary:
    """Specials, caption words, then ``n_codes`` visual codes.

    Parameters
    ----------
    words : list of str
        Caption words (sorted and deduplicated here).
    n_codes : int
        Codebook size.
    """

    def __init__(self, words: list[str], n_codes: int) -> None:
        self.words = sorted(set(words))
        self.word_id = {w: N_SPECIAL + i for i, w in enumerate(self.words)}
        self.code_offset = N_SPECIAL + len(self.words)
        self.size = self.code_offset + n_codes

    def encode_text(self, text: str) -> list[int]:
        """Word ids of ``text`` (split on spaces).

        Raises
        ------
        ValueError
            A word outside the vocabulary.
        """
        try:
            return [self.word_id[w] for w in text.split()]
        except KeyError as exc:
            raise ValueError(f"text: word {exc.args[0]!r} is not in the caption vocabulary") \
                from None

    def decode_text(self, ids: list[int]) -> str:
        """Words of ``ids`` (non-word ids skipped)."""
        inv = {i: w for w, i in self.word_id.items()}
        return " ".join(inv[i] for i in ids if i in inv)


def build_sequence(vocab: Vocabulary, codes: list[int], text: str, image_first: bool) -> list[int]:
    """One training sequence (module docstring) from code ids and a caption."""
    img = [IMG] + [vocab.code_offset + c for c in codes] + [IMG_END]
    words = vocab.encode_text(text)
    body = img + words if image_first else words + img
    return [BOS] + body + [EOS]


class UnifiedLM(nn.Module):
    """Causal transformer LM over :class:`Vocabulary` (tied input/output embeddings).

    Parameters
    ----------
    vocab_size, max_len : int
        Vocabulary size and longest sequence.
    dim, depth, heads : int
        Width, layers, attention heads.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        """Next-token logits ``[B, L, V]`` of right-padded ``ids`` ``[B, L]``."""
        n = ids.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), 1)
        h = self.tok(ids) + self.pos(torch.arange(n, device=ids.device))[None]
        h = self.norm(self.blocks(h, mask=causal, is_causal=True))
        return h @ self.tok.weight.t()

    def loss(self, ids: Tensor) -> Tensor:
        """Mean next-token cross-entropy over the non-padding targets."""
        logits = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               ignore_index=PAD)

    @torch.no_grad()
    def caption(self, vocab: Vocabulary, codes: list[int], max_words: int = 8) -> str:
        """Greedy caption of an image given by its code ids."""
        ids = [BOS, IMG] + [vocab.code_offset + c for c in codes] + [IMG_END]
        out: list[int] = []
        for _ in range(max_words):
            if len(ids) >= self.max_len:
                break
            logits = self(torch.tensor([ids]))[0, -1]
            logits[vocab.code_offset:] = float("-inf")
            logits[[PAD, BOS, IMG, IMG_END]] = float("-inf")
            nxt = int(logits.argmax())
            if nxt == EOS:
                break
            ids.append(nxt)
            out.append(nxt)
        return vocab.decode_text(out)

    @torch.no_grad()
    def generate_image(self, vocab: Vocabulary, text: str, max_tokens: int,
                       generator: torch.Generator, temperature: float = 1.0) -> list[int]:
        """Sample visual code ids for ``text`` (at least one code; ``temperature`` 0 = greedy)."""
        ids = [BOS] + vocab.encode_text(text) + [IMG]
        codes: list[int] = []
        while len(codes) < max_tokens and len(ids) < self.max_len - 1:
            logits = self(torch.tensor([ids]))[0, -1]
            allowed = torch.full_like(logits, float("-inf"))
            allowed[vocab.code_offset:] = 0.0
            if codes:
                allowed[IMG_END] = 0.0
            logits = logits + allowed
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                p = torch.softmax(logits / temperature, -1)
                nxt = int(torch.multinomial(p, 1, generator=generator))
            if nxt == IMG_END:
                break
            codes.append(nxt - vocab.code_offset)
            ids.append(nxt)
        return codes


def pad_batch(seqs: list[list[int]]) -> Tensor:
    """Right-pad with :data:`PAD` to ``[B, L]``."""
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return torch.from_numpy(out)
