"""The LaVIT baseline's stages and measurements as functions (used by its trainer and by
``benchmarks/lavit.py``).

Measurements (names as in :data:`fedrec.baselines.lavit.model.METRICS`):

* ``recon_cosine``: mean cosine between reconstructed and teacher patch features (all patches);
* ``tokens_mean`` / ``tokens_std``: visual tokens per image; ``tokens_complexity_corr``: their
  Pearson correlation with the image complexity (:func:`fedrec.data.vision.complexity`), absent
  when the count does not vary (fixed-length tokenizer);
* ``codebook_usage`` (share of codes used) and ``codebook_perplexity`` over all tokens of the
  split;
* ``probe_*``: accuracy of a logistic-regression probe (standardised inputs, trained on the
  training images, scored on the split) on the mean-pooled *decoded* features, on the
  mean-pooled teacher features and on raw pixels;
* ``caption_accuracy``: share of images whose greedy caption from their visual tokens is exactly
  their class caption ("a digit seven" names the right digit);
* ``text_to_image_accuracy``: for ``t2i_samples`` generations per class caption, the share whose
  decoded features the teacher's classifier assigns to that class.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from fedrec.data.vision import ImageSet, class_caption, class_names
from fedrec.tokenizers.lavit import LaViTTokenizer
from fedrec.tokenizers.lavit_lm import UnifiedLM, Vocabulary, build_sequence, pad_batch
from fedrec.tokenizers.vit import ViT
from fedrec.tokenizers.vq import perplexity


def split_images(images: ImageSet, valid_share: float = 0.1, test_share: float = 0.2
                 ) -> dict[str, ImageSet]:
    """Train / valid / test by position (:func:`~fedrec.data.vision.image_set` is shuffled)."""
    n = len(images.labels)
    n_test, n_valid = int(round(test_share * n)), int(round(valid_share * n))
    idx = np.arange(n)
    return {"train": images.subset(idx[:n - n_test - n_valid]),
            "valid": images.subset(idx[n - n_test - n_valid:n - n_test]),
            "test": images.subset(idx[n - n_test:])}


def train_tokenizer_epoch(tok: LaViTTokenizer, optimizer: torch.optim.Optimizer, feats: Tensor,
                          batch_size: int, rng: np.random.Generator) -> dict[str, float]:
    """One epoch over teacher features ``[M, N, D]``; mean loss terms and tokens per image."""
    tok.train()
    order = rng.permutation(len(feats))
    sums = {"loss": 0.0, "cosine": 0.0, "ratio": 0.0, "commitment": 0.0, "tokens": 0.0}
    for start in range(0, len(order), batch_size):
        idx = torch.from_numpy(order[start:start + batch_size])
        out = tok(feats[idx])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        for key, val in (("loss", out.loss), ("cosine", out.cosine), ("ratio", out.ratio),
                         ("commitment", out.commitment), ("tokens", out.n_tokens.float().mean())):
            sums[key] += float(val.detach()) * len(idx)
    return {k: v / len(order) for k, v in sums.items()}


@torch.no_grad()
def tokenize_all(tok: LaViTTokenizer, feats: Tensor, batch_size: int = 256
                 ) -> tuple[list[list[int]], Tensor, np.ndarray, Tensor | None]:
    """Eval-mode tokens of every image.

    Returns
    -------
    codes : list of list of int
        Code ids per image (empty lists when the tokenizer does not quantise yet).
    recon : Tensor ``[M, N, D]``
        Reconstructed features.
    n_tokens : np.ndarray ``[M]``
    counts : Tensor or None
        Code counts over all images (None without quantisation).
    """
    tok.eval()
    codes: list[list[int]] = []
    recon, n_tok = [], []
    counts = None
    for s in range(0, len(feats), batch_size):
        out = tok(feats[s:s + batch_size])
        recon.append(out.recon)
        n_tok.append(out.n_tokens.numpy())
        for row, valid in zip(out.ids, out.valid, strict=True):
            codes.append([int(c) for c in row[valid]] if tok.quantize else [])
        if out.counts is not None:
            counts = out.counts if counts is None else counts + out.counts
    return codes, torch.cat(recon), np.concatenate(n_tok), counts


def tokenizer_metrics(tok: LaViTTokenizer, feats: Tensor, complexity: np.ndarray
                      ) -> dict[str, float]:
    """Reconstruction cosine, token-count statistics and codebook statistics of a split."""
    _, recon, n_tok, counts = tokenize_all(tok, feats)
    cos = torch.nn.functional.cosine_similarity(recon, feats, dim=-1).mean()
    out = {"recon_cosine": float(cos), "tokens_mean": float(n_tok.mean()),
           "tokens_std": float(n_tok.std())}
    if n_tok.std() > 0 and complexity.std() > 0:
        out["tokens_complexity_corr"] = float(np.corrcoef(n_tok, complexity)[0, 1])
    if counts is not None:
        out["codebook_usage"] = float((counts > 0).float().mean())
        out["codebook_perplexity"] = float(perplexity(counts))
    return out


def lm_sequences(vocab: Vocabulary, codes: list[list[int]], captions: list[str]
                 ) -> list[list[int]]:
    """Both orders (image -> text, text -> image) for every image."""
    return [build_sequence(vocab, c, t, first) for c, t in zip(codes, captions, strict=True)
            for first in (True, False)]


def train_lm_epoch(lm: UnifiedLM, optimizer: torch.optim.Optimizer, seqs: list[list[int]],
                   batch_size: int, rng: np.random.Generator) -> float:
    """One epoch of the unified next-token loss; returns the mean batch loss."""
    lm.train()
    order = rng.permutation(len(seqs))
    total, n = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = pad_batch([seqs[i] for i in order[start:start + batch_size]])
        loss = lm.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        n += 1
    return total / max(n, 1)


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, max_iter: int = 500) -> float:
    """Accuracy of a logistic regression on standardised features (scikit-learn, lbfgs)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():  # the iteration cap is a setting (probe_max_iter)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    return float((clf.predict(scaler.transform(x_test)) == y_test).mean())


def caption_accuracy(lm: UnifiedLM, vocab: Vocabulary, codes: list[list[int]],
                     captions: list[str]) -> float:
    """Share of exact greedy captions."""
    lm.eval()
    hits = [lm.caption(vocab, c) == t for c, t in zip(codes, captions, strict=True)]
    return float(np.mean(hits))


@torch.no_grad()
def text_to_image_accuracy(lm: UnifiedLM, vocab: Vocabulary, tok: LaViTTokenizer, teacher: ViT,
                           samples: int, max_tokens: int, seed: int) -> float:
    """Share of generated token sequences that the teacher classifies as the prompted class."""
    lm.eval()
    tok.eval()
    teacher.eval()
    g = torch.Generator().manual_seed(seed)
    hits = []
    for c in range(len(class_names())):
        gens = [lm.generate_image(vocab, class_caption(c), max_tokens, g) for _ in range(samples)]
        width = max(len(s) for s in gens)
        ids = torch.full((samples, width), -1, dtype=torch.long)
        for i, s in enumerate(gens):
            ids[i, :len(s)] = torch.tensor(s)
        feats = tok.decode_ids(ids, ids >= 0)
        hits.append((teacher.classify_features(feats).argmax(1) == c).float().numpy())
    return float(np.concatenate(hits).mean())
