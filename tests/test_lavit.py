"""LaVIT-style dynamic visual tokenizer (fedrec.tokenizers.lavit) and its toy unified LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.tokenizers.lavit import (
    LaViTTokenizer,
    TokenMerger,
    TokenSelector,
    cross_attention_mask,
    fixed_keep,
    gather_kept,
    gumbel_keep,
    policy_softmax,
    ratio_loss,
    self_attention_mask,
)
from fedrec.tokenizers.lavit_lm import (
    BOS,
    EOS,
    IMG,
    IMG_END,
    UnifiedLM,
    Vocabulary,
    build_sequence,
    pad_batch,
)

torch.set_num_threads(1)


def test_gumbel_keep_is_hard_with_the_soft_samples_gradient():
    logits = torch.randn(3, 5, 2, requires_grad=True)
    w = torch.randn(3, 5)
    hard = gumbel_keep(torch.log_softmax(logits, -1), 0.7, True, torch.Generator().manual_seed(1))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    soft = gumbel_keep(torch.log_softmax(logits, -1), 0.7, False, torch.Generator().manual_seed(1))
    (g_soft,) = torch.autograd.grad((soft * w).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)
    assert g_hard.abs().sum() > 0
    # the hard value is the argmax of the soft sample (index 0 = keep)
    assert torch.equal(hard.detach() == 1, soft.detach() > 0.5)


def test_ratio_loss_value():
    policy = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    # per image (0.5 - 0.25)^2 and (0.5 - 0.75)^2
    assert float(ratio_loss(policy, 0.5)) == pytest.approx(0.0625)
    assert float(ratio_loss(policy, 0.5, "batch")) == pytest.approx(0.0)


def test_selector_trained_on_ratio_loss_reaches_target_keep_ratio():
    torch.manual_seed(0)
    sel = TokenSelector(16)
    feats = torch.randn(32, 20, 16)
    opt = torch.optim.Adam(sel.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def keep_ratio() -> float:
        with torch.no_grad():
            return float(gumbel_keep(sel(feats), 1.0, True, g).mean())

    before = keep_ratio()
    for _ in range(150):
        loss = ratio_loss(gumbel_keep(sel(feats), 1.0, True, g), 0.25, "image")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = np.mean([keep_ratio() for _ in range(5)])
    assert abs(before - 0.5) < 0.1  # zero-initialised bias: about half kept at start
    assert abs(after - 0.25) < 0.05


def test_self_and_cross_attention_masks_follow_the_rules():
    m = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    expect = torch.tensor([[1, 0, 0, 0],   # i=0 sees itself (kept)
                           [1, 1, 0, 0],   # i=1 (dropped) sees kept 0 and itself
                           [1, 0, 1, 0],   # i=2 sees kept 0 and itself, not dropped 1
                           [1, 0, 1, 1]],  # i=3 sees kept 0, 2 and itself; nothing later
                          dtype=torch.float32)
    torch.testing.assert_close(self_attention_mask(m)[0], expect)
    cross = cross_attention_mask(m)[0]
    torch.testing.assert_close(cross, torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 4))


def test_policy_softmax_eps_rule():
    s = torch.tensor([[0.3, -1.0, 2.0]])
    full = policy_softmax(s, torch.ones(1, 3))
    torch.testing.assert_close(full, torch.softmax(s, -1), atol=1e-5, rtol=0)
    masked = policy_softmax(s, torch.tensor([[1.0, 1.0, 0.0]]))
    e = torch.exp(s - 2.0)[0]
    expect = (e[:2] + 1e-6 / 3) / (e[:2].sum() + 1e-6)
    torch.testing.assert_close(masked[0, :2], expect)
    assert float(masked[0, 2]) == pytest.approx(1e-6 / 3 / float(e[:2].sum() + 1e-6))
    none = policy_softmax(s, torch.zeros(1, 3))  # no visible key: uniform
    torch.testing.assert_close(none, torch.full((1, 3), 1 / 3))


def test_merger_kept_tokens_are_causal_among_kept_and_absorb_dropped_ones():
    torch.manual_seed(0)
    merger = TokenMerger(16, depth=2, heads=2).eval()
    x = torch.randn(1, 6, 16)
    m = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    base = merger(x, m)
    later_kept = x.clone()
    later_kept[0, 5] += 3.0 * torch.randn(16)  # a later kept token: invisible to 0, 2, 3
    out = merger(later_kept, m)
    torch.testing.assert_close(out[0, :5], base[0, :5], atol=1e-4, rtol=0)
    dropped = x.clone()
    dropped[0, 4] += 3.0 * torch.randn(16)  # a dropped token (even a later one) reaches all kept
    out = merger(dropped, m)
    assert (out[0, [0, 2, 3, 5]] - base[0, [0, 2, 3, 5]]).abs().max() > 1e-2


def test_gather_kept_variable_counts_in_raster_order():
    x = torch.arange(12.0).view(2, 6, 1)
    keep = torch.tensor([[True, False, True, False, False, False],
                         [False, True, True, True, False, True]])
    tokens, valid = gather_kept(x, keep)
    assert valid.sum(1).tolist() == [2, 4]
    assert tokens[0, :2, 0].tolist() == [0.0, 2.0] and tokens[0, 2:].abs().sum() == 0
    assert tokens[1, :, 0].tolist() == [7.0, 8.0, 9.0, 11.0]


def test_tokenizer_gives_variable_token_counts_and_padding_ids():
    torch.manual_seed(0)
    tok = LaViTTokenizer(16, 16, heads=2, code_dim=4, codebook_size=8, rho=0.4)
    feats = torch.randn(12, 16, 16)
    feats[:6] *= 0.1
    tok.set_phase("B")
    tok.train()
    out = tok(feats)
    assert out.recon.shape == (12, 16, 16)
    counts = out.n_tokens
    assert len(set(counts.tolist())) > 1 and int(counts.min()) >= 1
    assert torch.equal(out.ids >= 0, out.valid)
    assert int(out.ids.max()) < 8
    assert int(out.counts.sum()) == int(counts.sum())
    # decoding the ids again gives the forward pass's reconstruction (eval: same draws)
    tok.eval()
    out = tok(feats)
    torch.testing.assert_close(tok.decode_ids(out.ids, out.valid), out.recon, atol=1e-5,
                               rtol=1e-5)


def test_phases_quantiser_and_frozen_selector():
    tok = LaViTTokenizer(16, 16, heads=2, code_dim=4, codebook_size=8)
    tok.set_phase("A")
    tok.train()
    out = tok(torch.randn(4, 16, 16))
    assert out.counts is None and bool((out.ids == -1).all())
    out.loss.backward()
    assert tok.selector.in_conv[1].weight.grad is not None  # the selector learns in phase A
    tok.zero_grad()
    tok.set_phase("B")
    out = tok(torch.randn(4, 16, 16))
    out.loss.backward()
    assert tok.selector.in_conv[1].weight.grad is None
    assert tok.decoder.in_proj.weight.grad is not None
    expect = out.cosine + tok.ratio_weight * out.ratio + tok.beta * out.commitment
    torch.testing.assert_close(out.loss, expect)


def test_fixed_length_ablation_keeps_the_same_evenly_spaced_patches():
    assert fixed_keep(10, 4).nonzero().flatten().tolist() == [0, 3, 6, 9]
    tok = LaViTTokenizer(16, 64, mode="fixed", heads=2, code_dim=4, codebook_size=8, rho=0.25)
    out = tok(torch.randn(5, 64, 16))
    assert out.n_tokens.tolist() == [16] * 5
    assert tok.selector is None and float(out.ratio) == 0.0


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="mode"):
        LaViTTokenizer(16, 16, mode="static")
    with pytest.raises(ValueError, match="rho"):
        LaViTTokenizer(16, 16, rho=0.0)


def test_unified_lm_layout_and_it_learns_to_caption_and_generate():
    vocab = Vocabulary(["a", "digit", "one", "two"], n_codes=6)
    seq = build_sequence(vocab, [2, 5], "a digit one", image_first=True)
    off = vocab.code_offset
    words = [vocab.word_id[w] for w in ("a", "digit", "one")]
    assert seq == [BOS, IMG, off + 2, off + 5, IMG_END, *words, EOS]
    seq2 = build_sequence(vocab, [2, 5], "a digit one", image_first=False)
    assert seq2 == [BOS, *words, IMG, off + 2, off + 5, IMG_END, EOS]
    with pytest.raises(ValueError, match="three"):
        vocab.encode_text("a digit three")
    torch.manual_seed(0)
    lm = UnifiedLM(vocab.size, 16, dim=32, depth=1, heads=2)
    data = [([0, 1], "a digit one"), ([3, 4, 4], "a digit two")]
    seqs = pad_batch([build_sequence(vocab, c, t, f) for c, t in data for f in (True, False)])
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    first = float(lm.loss(seqs).detach())
    for _ in range(150):
        loss = lm.loss(seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    assert lm.caption(vocab, [0, 1]) == "a digit one"
    assert lm.caption(vocab, [3, 4, 4]) == "a digit two"
    g = torch.Generator().manual_seed(0)
    assert lm.generate_image(vocab, "a digit two", 8, g, temperature=0) == [3, 4, 4]
