"""VICTOR's proxy tasks, queue and momentum update (fedrec.baselines.victor)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedrec.baselines.victor.tasks import (
    IGNORE,
    KeyQueue,
    dual_nce,
    inter_video_nce,
    intra_video_nce,
    mask_frames,
    mask_tokens,
    momentum_update,
    shuffle_frames,
    shuffle_sentences,
)

torch.set_num_threads(1)


def test_mask_tokens_masks_only_maskable_positions_and_labels_them():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (64, 20))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    maskable[:, 15:] = False
    out, labels = mask_tokens(ids, maskable, 0.15, 103, g)
    changed = out != ids
    assert bool((out[changed] == 103).all())
    assert not bool(changed[~maskable].any())
    assert torch.equal(labels[changed], ids[changed])
    assert bool((labels[~changed] == IGNORE).all())
    assert bool(changed.any(1).all())  # at least one per row
    assert abs(float(changed[maskable].float().mean()) - 0.15) < 0.04


def test_shuffled_sentences_and_frames_are_permutations_with_original_index_labels():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        order = shuffle_sentences(3, g)
        assert sorted(order.tolist()) == [0, 1, 2] and order.tolist() != [0, 1, 2]
        order, labels = shuffle_frames(8, 0.5, g)
        assert sorted(order.tolist()) == list(range(8))
        moved = order != torch.arange(8)
        assert int(moved.sum()) == 4  # every chosen frame moves
        assert torch.equal(labels[moved], order[moved])
        assert bool((labels[~moved] == IGNORE).all())
    masked = mask_frames(50, 8, 0.15, g)
    assert bool(masked.any(1).all()) and not bool(masked.all(1).any())


def test_frame_order_labels_are_recovered_by_an_oracle_reading_the_content():
    # frame features = one-hot of the original index: an oracle that reads the content
    # predicts the label exactly, and its loss is minimal among all permutations of answers
    g = torch.Generator().manual_seed(2)
    order, labels = shuffle_frames(6, 0.5, g)
    feats = torch.eye(6)[order]  # slot t shows original frame order[t]
    oracle = 20.0 * feats  # logits over original positions
    best = F.cross_entropy(oracle, labels, ignore_index=IGNORE)
    assert float(best) < 1e-6
    for perm in itertools.permutations(range(6)):
        if list(perm) != list(range(6)):
            other = F.cross_entropy(oracle[:, list(perm)], labels, ignore_index=IGNORE)
            assert float(other) >= float(best)


def _toy_features(b: int, t: int, d: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, t, d, generator=torch.Generator().manual_seed(3)), dim=-1)


def test_intra_video_nce_is_minimal_at_the_true_frames():
    target = _toy_features(2, 4, 16)
    masked = torch.tensor([[True, False, True, False], [False, True, True, True]])
    true = intra_video_nce(target, target, masked, 0.1)
    for perm in itertools.permutations(range(4)):
        if list(perm) != list(range(4)):
            wrong = intra_video_nce(target[:, list(perm)], target, masked, 0.1)
            assert float(wrong) > float(true)
    # the candidates are the same video's frames only: other videos do not change the loss
    other = target.clone()
    other[1] = _toy_features(1, 4, 16)[0] * -1
    solo = intra_video_nce(target[:1], target[:1], masked[:1], 0.1)
    pair = intra_video_nce(target, other, masked, 0.1)
    n0, n1 = int(masked[0].sum()), int(masked[1].sum())
    assert float(pair) == pytest.approx(
        (float(solo) * n0 + float(intra_video_nce(target[1:], other[1:], masked[1:], 0.1)) * n1)
        / (n0 + n1), rel=1e-5)


def test_inter_video_nce_is_minimal_at_the_true_frames_and_ignores_same_video_frames():
    target = _toy_features(3, 4, 16)
    masked = torch.tensor([[True, True, False, False], [False, True, False, False],
                           [False, False, True, False]])
    true = inter_video_nce(target, target, masked, 0.1)
    swapped = target.clone()
    swapped[0, 0], swapped[1, 1] = target[1, 1], target[0, 0]  # predictions of two videos swapped
    assert float(inter_video_nce(swapped, target, masked, 0.1)) > float(true)
    # known value: candidates are the masked frames of the other videos (rows 0 and 1 are both
    # video 0, so they are not candidates of each other)
    p = F.normalize(target[masked], dim=-1)
    lg = p @ p.t() / 0.1
    lg[0, 1] = lg[1, 0] = float("-inf")  # rows 0 and 1 are video 0
    assert float(true) == pytest.approx(float(F.cross_entropy(lg, torch.arange(4))), rel=1e-5)


def test_dual_nce_is_minimal_for_aligned_pairs():
    v = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(4)), dim=-1)
    queue = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(5)), dim=-1)
    aligned = dual_nce(v, v, v, v, queue, queue, 0.1)
    for perm in itertools.permutations(range(4)):
        if list(perm) != list(range(4)):
            t = v[list(perm)]
            assert float(dual_nce(v, t, v, t, queue, queue, 0.1)) > float(aligned)


def test_queue_is_fifo():
    q = KeyQueue(4, 2)
    keys = torch.arange(12.0).view(6, 2)
    q.enqueue(keys[:3])
    assert torch.equal(q.ordered()[1:], keys[:3])  # one random initial key is still the oldest
    q.enqueue(keys[3:5])
    assert torch.equal(q.ordered(), keys[1:5])  # the oldest (key 0) left first
    q.enqueue(keys[5:])
    assert torch.equal(q.ordered(), keys[2:6])
    assert int(q.ptr) == 6 % 4


def test_momentum_update_formula():
    torch.manual_seed(0)
    online, mom = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in mom.parameters()]
    momentum_update(online, mom, 0.9)
    for k, q, k0 in zip(mom.parameters(), online.parameters(), before, strict=True):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)


def test_minilm_encoder_with_fewer_layers_loads_the_first_layers():
    from fedrec.plm import minilm_encoder

    one = minilm_encoder(layers=1, max_positions=64)
    six = minilm_encoder()
    for (name, a), (_, b) in zip(one.layers[0].state_dict().items(),
                                 six.layers[0].state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert len(one.layers) == 1


@pytest.fixture(scope="module")
def toy():
    from fedrec.baselines.victor.data import build_data
    from fedrec.baselines.victor.model import VICTOR

    data = build_data(0, n_videos=40, n_users=10, per_user=4)
    torch.manual_seed(0)
    model = VICTOR(dim=32, heads=2, cross_layers=1, text_layers=1, queue_size=16, n_videos=40)
    model.attach(data.corpus_ids)
    return data, model


def test_text_assembly_puts_sentences_in_the_given_order(toy):
    from fedrec.baselines.victor.data import assemble_text, sentence_targets

    data, _ = toy
    vids = np.array([0, 1])
    orders = torch.tensor([[2, 0, 1], [1, 2, 0]])
    text = assemble_text(data, vids, orders)
    for b, v in enumerate(vids):
        for j in range(3):
            toks = text.ids[b][text.slot[b] == j].tolist()
            assert toks == data.sentence_ids[v][int(orders[b, j])] + [data.sep_id]
    masked = assemble_text(data, vids, masked_slot=torch.tensor([1, 0]))
    assert masked.ids[0][masked.slot[0] == 1].tolist() == [data.mask_id, data.sep_id]
    inp, tgt = sentence_targets(data, vids, torch.tensor([1, 0]))
    s = data.sentence_ids[0][1]
    assert inp[0, :len(s) + 1].tolist() == [data.cls_id] + s
    assert tgt[0, :len(s) + 1].tolist() == s + [data.sep_id]


def test_each_task_is_switchable_and_the_queue_follows_training(toy):
    data, model = toy
    vids = data.warm[:6]
    frames = torch.from_numpy(data.videos.frames[vids])
    terms = model.loss_terms(frames, vids, data, torch.Generator().manual_seed(0))
    assert set(terms) == {"mlm", "msom", "mfom", "msg", "intra_mfm", "inter_mfm", "dual_vsa"}
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    weights = dict(model.weights)
    try:
        model.weights.update({k: 0.0 for k in weights if k != "msom"})
        only = model.loss_terms(frames, vids, data, torch.Generator().manual_seed(0))
        assert set(only) == {"msom"}
    finally:
        model.weights.update(weights)
    ptr = int(model.v_queue.ptr)
    model.after_step()
    assert int(model.v_queue.ptr) == (ptr + len(vids)) % model.v_queue.keys.shape[0]


def test_bad_parameters_name_the_key():
    from fedrec.baselines.victor.model import VICTOR

    with pytest.raises(ValueError, match="mlm_weight"):
        VICTOR(mlm_weight=-1.0, text_layers=1)
    with pytest.raises(ValueError, match="text_layers"):
        VICTOR(text_layers=7)
