"""The model contract (fedrec.models.base) for SASRec, BERT4Rec and GRU4Rec.

Checks shapes and dispatch, per-row gradients under ``torch.func`` against a loop of
``.backward()``, batch-width/padding invariance of row losses and scores, the loss reductions,
SDPA vs explicit attention, cloze masking statistics, BCE negatives, SASRec causality, that a
few Adam steps reduce the loss, and parameter validation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from fedrec.data.batching import pad_left, to_tensor
from fedrec.data.random import stream_key
from fedrec.errors import ConfigError
from fedrec.models import MODELS, build_model
from fedrec.models.transformer import vmap_safe_attention

torch.set_num_threads(1)

N_ITEMS = 40
MAX_LEN = 10

# (model name, loss type); BERT4Rec has only the cloze (full-softmax) loss.
VARIANTS = [("sasrec", "bce"), ("sasrec", "ce"), ("bert4rec", "ce"), ("gru4rec", "bce"),
            ("gru4rec", "ce")]
IDS = [f"{m}-{lo}" for m, lo in VARIANTS]


def make(name: str, loss: str = "bce", dropout: float = 0.0, seed: int = 0, **kw):
    """A tiny model with deterministic init."""
    torch.manual_seed(seed)
    size = {"hidden": 16, "max_len": MAX_LEN, "dropout": dropout}
    if name != "gru4rec":
        size.update(blocks=2, heads=2)
    if name != "bert4rec":
        kw.setdefault("n_neg", 2)
    return build_model(name, N_ITEMS, loss_type=loss, **size, **kw)


def sequences(n: int, seed: int = 0, lo: int = 3, hi: int = 15) -> list[np.ndarray]:
    """Random training sequences, some longer than MAX_LEN (truncated by the models)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, N_ITEMS + 1, size=rng.integers(lo, hi + 1)) for _ in range(n)]


def batch_for(model, seqs, users, seed: int = 7):
    return model.prepare_batch(seqs, stream_key(seed, np.asarray(users)))


# Equivalence checks below (two computations of the same function whose float reductions run
# in a different order or through different kernels: vmap vs loop, padded vs unpadded widths,
# SDPA vs explicit attention) run the model in float64. In float32 their gap depends on the
# CPU's kernels (AVX-512 vs AVX2, oneDNN); in float64 it is ~1e-15 on unit-scale values, so
# atol/rtol ~1e-10 hold on any machine and are far below any real discrepancy.
TIGHT = {"atol": 1e-10, "rtol": 1e-9}


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_contract_shapes_and_dispatch(name, loss):
    model = make(name, loss).eval()
    seqs = sequences(6)
    batch = batch_for(model, seqs, range(6))
    width = batch["inputs"].shape[1]
    assert width == min(MAX_LEN, max(len(s) for s in seqs) - (name != "bert4rec"))
    assert batch["targets"].shape == batch["inputs"].shape
    if loss == "bce":
        assert batch["negatives"].shape == (6, width, model.n_neg)
    rows = model.row_losses(batch)
    assert rows.shape == (6,) and torch.isfinite(rows).all() and (rows > 0).all()
    assert model.loss(batch).shape == ()
    assert torch.equal(model(batch), rows)

    hist = model.histories_to_tensor(seqs)
    scores = model.scores(hist)
    assert scores.shape == (6, N_ITEMS + 1)
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()
    assert torch.equal(model(hist), scores)


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_functional_call_matches_module_and_uses_given_params(name, loss):
    model = make(name, loss).eval()
    seqs = sequences(5)
    batch = batch_for(model, seqs, range(5))
    hist = model.histories_to_tensor(seqs)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert torch.allclose(functional_call(model, params, (batch,)), model(batch))
    assert torch.allclose(functional_call(model, params, (hist,)), model.scores(hist))

    # substituted parameters are really used: perturbing the item table changes the losses,
    # and matches a model that holds the perturbed table
    params["item_emb.weight"] = params["item_emb.weight"] * 1.5
    out = functional_call(model, params, (batch,))
    assert not torch.allclose(out, model(batch))
    with torch.no_grad():
        model.item_emb.weight.mul_(1.5)
    assert torch.allclose(out, model(batch), atol=1e-6)


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_vmap_grad_matches_per_row_backward(name, loss):
    model = make(name, loss).double().train()  # dropout is 0, so train mode is deterministic
    seqs = sequences(5, seed=3)
    batch = batch_for(model, seqs, range(5))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def row_loss(p, row):
        one = {k: v.unsqueeze(0) for k, v in row.items()}
        return functional_call(model, p, (one,), {"dense": True})[0]

    with vmap_safe_attention():
        per_row = vmap(grad(row_loss), in_dims=(None, 0))(params, batch)

    for i in range(len(seqs)):
        model.zero_grad(set_to_none=True)
        row = {k: v[i:i + 1] for k, v in batch.items()}
        model.row_losses(row)[0].backward()
        for k, p in model.named_parameters():
            ref = p.grad if p.grad is not None else torch.zeros_like(p)
            assert per_row[k].dtype == torch.float64
            torch.testing.assert_close(per_row[k][i], ref, **TIGHT, msg=k)


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_row_loss_is_batch_width_invariant(name, loss):
    """A row's loss is the same alone or inside batches padded to different widths."""
    model = make(name, loss).double().eval()
    short = sequences(4, seed=1, lo=3, hi=5)
    longer = sequences(4, seed=2, lo=12, hi=15)
    users = np.arange(8)
    alone = [model.row_losses(batch_for(model, [s], [u]))[0] for s, u in zip(short, users)]
    mixed = model.row_losses(batch_for(model, short + longer, users))
    mixed2 = model.row_losses(batch_for(model, longer[:1] + short, np.r_[4, users[:4]]))
    for i in range(4):
        assert mixed.dtype == torch.float64
        torch.testing.assert_close(mixed[i], alone[i], **TIGHT)
        torch.testing.assert_close(mixed2[i + 1], alone[i], **TIGHT)


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_scores_are_padding_invariant(name, loss):
    """Scores are equal for a history padded to its own length, to max_len, or in a batch."""
    model = make(name, loss).double().eval()
    hist = sequences(3, seed=4, lo=2, hi=6)
    long = sequences(1, seed=5, lo=14, hi=14)
    own = torch.cat([model.scores(to_tensor(pad_left([h], MAX_LEN))) for h in hist])
    full_width = model.scores(to_tensor(pad_left(hist, MAX_LEN, width=MAX_LEN)))
    in_batch = model.scores(model.histories_to_tensor(long + hist))[1:]
    assert own.dtype == torch.float64
    torch.testing.assert_close(full_width, own, **TIGHT)
    torch.testing.assert_close(in_batch, own, **TIGHT)


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_loss_is_target_weighted_mean_of_row_losses(name, loss):
    model = make(name, loss).double().eval()
    seqs = sequences(7, seed=6)
    batch = batch_for(model, seqs, range(7))
    counts = (batch["targets"] > 0).sum(1).to(torch.float64)
    assert len(set(counts.tolist())) > 1  # unequal counts, so the weighting matters
    expected = (model.row_losses(batch) * counts).sum() / counts.sum()
    assert expected.dtype == torch.float64
    torch.testing.assert_close(model.loss(batch), expected, **TIGHT)
    # dense and sparse evaluation of the loss agree
    torch.testing.assert_close(model.row_losses(batch, dense=True), model.row_losses(batch),
                               **TIGHT)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_sdpa_and_explicit_attention_agree(name):
    model = make(name, "ce").double().eval()
    seqs = sequences(6, seed=8)
    hist = model.histories_to_tensor(seqs)
    sdpa = model.encode(hist)
    with vmap_safe_attention():
        explicit = model.encode(hist)
    assert sdpa.dtype == torch.float64
    torch.testing.assert_close(explicit, sdpa, **TIGHT)
    assert torch.isfinite(sdpa).all()


# ----------------------------------------------------------------------------- batches


def test_bert4rec_cloze_masks():
    model = make("bert4rec", "ce", mask_prob=0.2)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, N_ITEMS + 1, size=MAX_LEN) for _ in range(3000)]
    b = model.prepare_batch(seqs, stream_key(1, np.arange(len(seqs))))
    orig = torch.as_tensor(np.stack(seqs))
    masked = b["targets"] > 0
    # every row has at least one target; targets are the original items at masked positions
    assert masked.any(1).all()
    assert torch.equal(b["targets"][masked], orig[masked])
    # unmasked positions keep their item
    assert torch.equal(b["inputs"][~masked], orig[~masked])
    # masking rate ~ mask_prob (plus the forced last-item mask of rows that drew none)
    n = masked.numel()
    p_none = (1 - 0.2) ** MAX_LEN
    expected = 0.2 + p_none / MAX_LEN
    assert abs(masked.float().mean().item() - expected) < 4 * np.sqrt(0.2 * 0.8 / n)
    # 80 % mask token, 10 % random item, 10 % unchanged (random may equal the original)
    inp = b["inputs"][masked]
    share_mask = (inp == model.mask_token).float().mean().item()
    share_kept = (inp == orig[masked]).float().mean().item()
    m = int(masked.sum())
    assert abs(share_mask - 0.8) < 4 * np.sqrt(0.16 / m)
    assert abs(share_kept - (0.1 + 0.1 / N_ITEMS)) < 4 * np.sqrt(0.09 / m) + 0.005
    assert ((inp >= 1) & (inp <= model.mask_token)).all()
    # the mask token is never a scoring column and is what scores() appends
    assert model.scores(model.histories_to_tensor(seqs[:2])).shape[1] == N_ITEMS + 1


def test_bert4rec_masks_respect_short_sequences_and_anchoring():
    model = make("bert4rec", "ce", mask_prob=0.3)
    seqs = sequences(50, seed=9, lo=3, hi=6)
    b = model.prepare_batch(seqs, stream_key(2, np.arange(50)))
    assert ((b["targets"] > 0) <= (b["inputs"] > 0)).all()  # never a target on padding
    assert (b["targets"] > 0).any(1).all()
    # a row's cloze batch is identical alone (right-anchored draws)
    one = model.prepare_batch(seqs[3:4], stream_key(2, np.arange(3, 4)))
    w = one["inputs"].shape[1]
    assert torch.equal(b["inputs"][3, -w:], one["inputs"][0])
    assert torch.equal(b["targets"][3, -w:], one["targets"][0])


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_bce_negatives_never_equal_the_positive(name):
    model = make(name, "bce", n_neg=3)
    small = build_model(name, 4, max_len=MAX_LEN, hidden=8, dropout=0.0, n_neg=5)
    for m, n_items in ((model, N_ITEMS), (small, 4)):
        rng = np.random.default_rng(1)
        seqs = [rng.integers(1, n_items + 1, size=rng.integers(3, 14)) for _ in range(400)]
        b = m.prepare_batch(seqs, stream_key(3, np.arange(400)))
        tgt, neg = b["targets"], b["negatives"]
        real = (tgt > 0).unsqueeze(-1).expand_as(neg)
        assert (neg[real] != tgt.unsqueeze(-1).expand_as(neg)[real]).all()
        assert ((neg >= 1) & (neg <= n_items)).all()
    # on the tiny vocabulary every non-target item actually occurs as a negative
    assert set(neg[real].unique().tolist()) == {1, 2, 3, 4}


def test_sasrec_is_causal():
    model = make("sasrec", "bce").eval()
    seq = torch.tensor([[0, 0, 3, 7, 11, 5, 9, 2, 8, 4]])
    base = model.encode(seq)
    for t in (4, 6, 9):
        changed = seq.clone()
        changed[0, t] = 1 if seq[0, t] != 1 else 2
        out = model.encode(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_sasrec_block_follows_its_equation():
    """Q = LN(x); x = Q + MHA(Q, x); x = LN(x); x + FFN(x): with attention dropout off, the
    attention branch is deterministic in training mode however large the other dropout is."""
    from fedrec.models.sasrec import SASRecBlock
    from fedrec.models.transformer import attention_mask

    torch.manual_seed(0)
    block = SASRecBlock(16, 2, dropout=0.9, attn_dropout=0.0).train()
    block.ffn.forward = torch.zeros_like  # isolate the attention half
    x = torch.randn(3, 7, 16)
    allowed = attention_mask(torch.ones(3, 7, dtype=torch.long), causal=True)
    q = block.ln_attn(x)
    expected = block.ln_ffn(q + block.attn(q, x, allowed))
    torch.testing.assert_close(block(x, allowed), expected)
    torch.testing.assert_close(block(x, allowed), block(x, allowed))


def test_bert4rec_is_bidirectional():
    model = make("bert4rec", "ce").eval()
    seq = torch.tensor([[0, 0, 3, 7, 11, 5, 9, 2, 8, 4]])
    changed = seq.clone()
    changed[0, 9] = 1
    assert not torch.allclose(model.encode(changed)[:, 5], model.encode(seq)[:, 5])


@pytest.mark.parametrize("name,loss", VARIANTS, ids=IDS)
def test_adam_steps_reduce_the_loss(name, loss):
    model = make(name, loss, seed=1).train()
    batch = batch_for(model, sequences(16, seed=10), range(16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(model.loss(batch))
    for _ in range(40):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    with torch.no_grad():
        assert float(model.loss(batch)) < 0.75 * first


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_model_param_is_a_config_error_naming_it(name):
    with pytest.raises(ConfigError, match=r"model\.hiddn") as exc:
        build_model(name, 10, hiddn=8)
    assert "\n" not in str(exc.value)


def test_bad_model_name_and_values():
    with pytest.raises(ConfigError, match=r"model\.name='sasrek'"):
        build_model("sasrek", 10)
    with pytest.raises(ConfigError, match=r"model\.heads=3"):
        build_model("sasrec", 10, hidden=16, heads=3)
    with pytest.raises(ConfigError, match=r"model\.loss"):
        build_model("sasrec", 10, loss_type="mse")
    with pytest.raises(ConfigError, match=r"model\.loss"):
        build_model("bert4rec", 10, loss_type="bce")


def test_inputs_wider_than_max_len_are_rejected():
    model = make("sasrec")
    with pytest.raises(ValueError, match="max_len"):
        model.encode(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_dropout_is_the_inverted_dropout_of_its_uniform_draw():
    """``dropout`` builds its keep mask in place; forward and gradient are bit for bit
    ``x * (u >= p) / (1 - p)`` for the same uniform draw ``u``."""
    from fedrec.models.transformer import dropout

    x = torch.randn(4, 3, 50, 50, requires_grad=True)
    p = 0.3
    torch.manual_seed(5)
    out = dropout(x, p, training=True)
    torch.manual_seed(5)
    keep = torch.rand_like(x) >= p
    expected = x * keep * (1.0 / (1.0 - p))
    assert torch.equal(out, expected)
    g = torch.randn_like(x)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_expected,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(grad, grad_expected)
    assert 0.6 < keep.float().mean() < 0.8  # the mask keeps about 1 - p of the entries
    assert dropout(x, p, training=False) is x


def test_dropout_has_vmap_batching_rules():
    """The per-client path vmaps dropout: no op may fall back to functorch's per-sample loop
    (it warns "There is a performance drop ... batching rule")."""
    import warnings

    from torch.func import vmap

    from fedrec.models.transformer import dropout

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vmap(lambda z: dropout(z, 0.25, True), randomness="different")(torch.ones(8, 5, 6))
    kept = out != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert 0.5 < kept.float().mean() < 0.95
