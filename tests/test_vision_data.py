"""Offline images, videos and video interactions (fedrec.data.vision)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.vision import (
    DIGIT_WORDS,
    MOTION_NAMES,
    MOTIONS,
    TEXTURE_FILES,
    VideoSet,
    affinity,
    class_caption,
    complexity,
    image_set,
    load_texture,
    render_frame,
    skimage_data_dir,
    video_interactions,
    video_set,
)


def test_image_set_is_deterministic_labelled_and_captioned():
    a = image_set(seed=3, n_digits=40, crops_per_texture=3)
    b = image_set(seed=3, n_digits=40, crops_per_texture=3)
    c = image_set(seed=4, n_digits=40, crops_per_texture=3)
    assert a.images.shape == (40 + 3 * len(TEXTURE_FILES), 32, 32)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert sorted(np.bincount(a.labels)[10:].tolist()) == [3] * len(TEXTURE_FILES)
    pairs = zip(a.captions, a.labels, strict=True)
    assert all(cap == class_caption(int(lab)) for cap, lab in pairs)
    np.testing.assert_allclose(a.complexity, complexity(a.images))


def test_texture_files_are_bundled_and_read_locally():
    for name in TEXTURE_FILES:
        assert (skimage_data_dir() / name).is_file()
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        load_texture("nothing.png")


def test_complexity_known_values():
    flat = np.zeros((1, 4, 4))
    stripes = np.tile(np.array([0.0, 1.0]), (4, 2))[None]  # vertical stripes: |dx| = 1, dy = 0
    assert complexity(flat)[0] == 0.0
    assert complexity(stripes)[0] == pytest.approx(1.0)


def test_render_frame_translation_and_fade():
    digit = np.zeros((8, 8), dtype=np.float32)
    digit[2:6, 2:6] = 1.0
    a = render_frame(digit, 24, 8.0, 12.0, 8.0, 0.0, 1.0)
    b = render_frame(digit, 24, 16.0, 12.0, 8.0, 0.0, 1.0)
    np.testing.assert_allclose(b[:, 8:], a[:, :-8], atol=1e-5)  # moved right by 8 pixels
    faded = render_frame(digit, 24, 8.0, 12.0, 8.0, 0.0, 0.5)
    np.testing.assert_allclose(faded, 0.5 * a, atol=1e-6)


def test_video_descriptions_match_digits_and_motions_in_order():
    v = video_set(30, seed=1, n_frames=8, n_segments=2)
    assert v.frames.shape == (30, 8, 24, 24)
    for i in range(len(v)):
        sents = v.sentences[i]
        assert DIGIT_WORDS[v.digits[i]] in sents[0].split()
        assert sents[1:] == [MOTIONS[MOTION_NAMES[m]] for m in v.motions[i]]
    assert np.array_equal(video_set(30, seed=1).frames, v.frames)
    moved = [i for i in range(30) if MOTION_NAMES[v.motions[i, 0]] == "right"]
    for i in moved:  # the centre of mass moves right over the first segment
        cols = np.arange(24)
        mass = [(f.sum(0) * cols).sum() / f.sum() for f in v.frames[i, :4]]
        assert mass[-1] > mass[0] + 2
    with pytest.raises(ValueError, match="n_frames"):
        video_set(3, n_frames=9, n_segments=2)


def test_interactions_hold_out_cold_videos_and_follow_preferences():
    v = video_set(200, seed=0)
    it = video_interactions(v, 60, seed=0, per_user=8, cold_share=0.3)
    cold = set(it.cold.tolist())
    assert len(cold) == 60
    for u in range(60):
        assert not cold & set(it.train[u].tolist())
        assert len(set(it.train[u].tolist())) == 8
        assert int(it.test[u]) in cold
    aff = affinity(v, it.likes_digits, it.likes_motions)
    chosen = np.mean([aff[u, it.train[u]].mean() for u in range(60)])
    assert chosen > aff.mean() + 0.5  # users pick videos they like
    # known values: digit liked (2) + first motion liked (1) + any motion liked (0.5)
    toy = VideoSet(np.zeros((2, 2, 4, 4), np.float32), np.array([1, 2]),
                   np.array([[3, 4], [0, 3]]), [[], []])
    vals = affinity(toy, np.array([[1, 5]]), np.array([[3, 7]]))
    assert vals.tolist() == [[3.5, 0.5]]
