"""Offline image and video data for the vision-language baselines (LaVIT tokenizer, VICTOR).

Nothing is downloaded: every pixel comes from files inside installed wheels.

* **Digits**: scikit-learn's bundled ``digits`` (1797 images, 8 x 8, values 0..16, 10 classes;
  ``sklearn/datasets/data/digits.csv.gz``), scaled to ``[0, 1]``.
* **Textures**: crops of scikit-image's sample images that ship *inside* the package folder
  (``skimage/data/*.png|jpg``; the ``skimage.data`` functions that fetch through pooch are never
  called). Read with ``skimage.io.imread`` from :data:`TEXTURE_FILES`, converted to grey.

:func:`image_set` makes a labelled image set: a digit pasted at a random size and position on a
black ``size x size`` canvas (labels 0..9) and random grey crops of the texture images resized to
``size x size`` (labels 10.., one per file). Each image has a template caption
(:func:`class_caption`) and a complexity score (:func:`complexity`: the mean absolute gradient).

:func:`video_set` makes short clips with multi-sentence descriptions: one digit on a canvas goes
through ``n_segments`` motions in turn (:data:`MOTIONS`: moves left/right/up/down, rotates,
grows, shrinks, fades out, fades in), the frames of each segment interpolating the pose. The
description has one sentence for the entry and one per motion, in order ("a seven appears on
the left. it moves right. it grows."), so the digit, the motions, the frame order and the
sentence order are known. :func:`video_interactions` adds synthetic users, each preferring two
digits and two motions; a user's interaction probability with a video is a softmax of its
affinity (digit match + first-motion match + any-motion match); a share of videos is *cold*
(never in any training interaction) and each user's held-out item is a cold video drawn from
the same preference model.

Everything is deterministic given the seed (numpy ``default_rng`` streams keyed by purpose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: bundled scikit-image files used as textures, with the word naming each in captions
TEXTURE_FILES: dict[str, str] = {
    "brick.png": "bricks", "grass.png": "grass", "gravel.png": "gravel",
    "camera.png": "camera", "coins.png": "coins", "text.png": "text",
    "moon.png": "moon", "page.png": "page",
}

#: motions of the video set, with their sentences
MOTIONS: dict[str, str] = {
    "left": "it moves left", "right": "it moves right", "up": "it moves up",
    "down": "it moves down", "rotate": "it rotates", "grow": "it grows",
    "shrink": "it shrinks", "fade_out": "it fades out", "fade_in": "it fades in",
}
MOTION_NAMES = tuple(MOTIONS)


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), purpose])


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``float32 [1797, 8, 8]`` in ``[0, 1]`` and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def skimage_data_dir() -> Path:
    """The ``data`` folder inside the installed scikit-image package."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def load_texture(name: str) -> np.ndarray:
    """A bundled scikit-image file as grey ``float32 [H, W]`` in ``[0, 1]``.

    Raises
    ------
    FileNotFoundError
        The file is not in the installed package (names the path).
    """
    from skimage import io

    path = skimage_data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected a scikit-image bundled sample image")
    img = np.asarray(io.imread(path), dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(-1)
    return (img / max(float(img.max()), 1.0)).astype(np.float32)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a ``[H, W]`` array to ``size x size`` (antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=t.shape[-1] > size)
    return out[0, 0].clamp(0, 1).numpy()


def complexity(images: np.ndarray) -> np.ndarray:
    """Mean absolute horizontal + vertical gradient of each ``[N, H, W]`` image."""
    gx = np.abs(np.diff(images, axis=2)).mean(axis=(1, 2))
    gy = np.abs(np.diff(images, axis=1)).mean(axis=(1, 2))
    return (gx + gy).astype(np.float64)


def class_names() -> list[str]:
    """Class words: the ten digits, then the textures."""
    return list(DIGIT_WORDS) + list(TEXTURE_FILES.values())


def class_caption(label: int) -> str:
    """Template caption of a class: ``"a digit seven"`` or ``"a photo of bricks"``."""
    names = class_names()
    return f"a digit {names[label]}" if label < 10 else f"a photo of {names[label]}"


@dataclass
class ImageSet:
    """Labelled grey images.

    Attributes
    ----------
    images : np.ndarray
        ``float32 [N, size, size]`` in ``[0, 1]``.
    labels : np.ndarray
        ``int64 [N]``: 0..9 digits, 10.. textures (:func:`class_names`).
    captions : list of str
        :func:`class_caption` of each label.
    complexity : np.ndarray
        :func:`complexity` of each image.
    """

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    complexity: np.ndarray

    def subset(self, idx: np.ndarray) -> ImageSet:
        """The images at ``idx``."""
        return ImageSet(self.images[idx], self.labels[idx], [self.captions[i] for i in idx],
                        self.complexity[idx])


def paste_digit(digit: np.ndarray, size: int, scale: int, top: int, left: int) -> np.ndarray:
    """A ``size x size`` black canvas with ``digit`` resized to ``scale`` at ``(top, left)``."""
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[top:top + scale, left:left + scale] = resize(digit, scale)
    return canvas


def image_set(seed: int = 0, size: int = 32, n_digits: int = 1797, crops_per_texture: int = 150,
              min_scale: int = 14) -> ImageSet:
    """Digits on a canvas and texture crops (module docstring), shuffled by ``seed``.

    Parameters
    ----------
    seed : int
        Seed of positions, scales, crops and order.
    size : int
        Image side in pixels.
    n_digits : int
        Digit images used (the first ``n_digits`` of the 1797).
    crops_per_texture : int
        Crops per texture file.
    min_scale : int
        Smallest side of a pasted digit (the largest is ``size``).

    Raises
    ------
    ValueError
        ``min_scale`` outside ``[4, size]`` or a non-positive count.
    """
    if not 4 <= min_scale <= size:
        raise ValueError(f"min_scale: expected a value in [4, {size}], got {min_scale}")
    if n_digits < 1 or crops_per_texture < 0:
        raise ValueError("n_digits, crops_per_texture: expected n_digits >= 1, crops >= 0")
    digits, dlabels = load_digit_arrays()
    digits, dlabels = digits[:n_digits], dlabels[:n_digits]
    rng = _rng(seed, 1)
    out, labels = [], []
    for img, lab in zip(digits, dlabels, strict=True):
        scale = int(rng.integers(min_scale, size + 1))
        top, left = (int(v) for v in rng.integers(0, size - scale + 1, size=2))
        out.append(paste_digit(img, size, scale, top, left))
        labels.append(int(lab))
    for t, name in enumerate(TEXTURE_FILES):
        tex = load_texture(name)
        h, w = tex.shape
        for _ in range(crops_per_texture):
            side = int(rng.integers(size, min(h, w, 4 * size) + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            out.append(resize(tex[top:top + side, left:left + side], size))
            labels.append(10 + t)
    images = np.stack(out).astype(np.float32)
    order = _rng(seed, 2).permutation(len(images))
    images, lab_arr = images[order], np.asarray(labels, dtype=np.int64)[order]
    return ImageSet(images, lab_arr, [class_caption(int(c)) for c in lab_arr], complexity(images))


# ---------------------------------------------------------------------------------- videos
def render_frame(digit: np.ndarray, size: int, cx: float, cy: float, scale: float,
                 angle: float, alpha: float) -> np.ndarray:
    """One frame: ``digit`` centred at ``(cx, cy)`` (pixels), side ``scale`` pixels, rotated by
    ``angle`` radians, multiplied by ``alpha``, on a black ``size x size`` canvas (bilinear
    inverse mapping with ``grid_sample``)."""
    src = torch.from_numpy(np.ascontiguousarray(digit, dtype=np.float32))[None, None]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / (scale / 2.0)  # canvas -> digit coordinates in [-1, 1]
    v = (-s * dx + c * dy) / (scale / 2.0)
    grid = torch.stack([u, v], -1)[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (alpha * out[0, 0]).clamp(0, 1).numpy()


@dataclass
class VideoSet:
    """Clips of a moving digit with descriptions.

    Attributes
    ----------
    frames : np.ndarray
        ``float32 [V, T, size, size]``.
    digits : np.ndarray
        ``int64 [V]`` digit class.
    motions : np.ndarray
        ``int64 [V, n_segments]`` motion ids (:data:`MOTION_NAMES`), in order.
    sentences : list of list of str
        Per video: entry sentence then one per motion, in order.
    """

    frames: np.ndarray
    digits: np.ndarray
    motions: np.ndarray
    sentences: list[list[str]]

    @property
    def descriptions(self) -> list[str]:
        """Sentences joined as ``"s1. s2. s3."``."""
        return [". ".join(s) + "." for s in self.sentences]

    def __len__(self) -> int:
        return len(self.frames)


_START = {"left": "on the right", "right": "on the left", "up": "at the bottom",
          "down": "at the top"}


def _pose_path(motion: str, pose: dict[str, float], size: int) -> dict[str, float]:
    """The pose at the end of ``motion`` starting from ``pose``."""
    end = dict(pose)
    step = size * 0.3
    if motion == "left":
        end["cx"] = pose["cx"] - step
    elif motion == "right":
        end["cx"] = pose["cx"] + step
    elif motion == "up":
        end["cy"] = pose["cy"] - step
    elif motion == "down":
        end["cy"] = pose["cy"] + step
    elif motion == "rotate":
        end["angle"] = pose["angle"] + math.pi / 2
    elif motion == "grow":
        end["scale"] = pose["scale"] * 1.5
    elif motion == "shrink":
        end["scale"] = pose["scale"] / 1.5
    elif motion == "fade_out":
        end["alpha"] = 0.2
    elif motion == "fade_in":
        end["alpha"] = 1.0
    return end


def _motion_ok(motion: str, pose: dict[str, float], size: int) -> bool:
    end = _pose_path(motion, pose, size)
    half = end["scale"] / 2.0
    lo, hi = half * 0.6, size - half * 0.6
    inside = lo <= end["cx"] <= hi and lo <= end["cy"] <= hi
    if motion == "fade_in":
        return pose["alpha"] < 0.5
    if motion == "fade_out":
        return pose["alpha"] > 0.5
    return inside and size * 0.3 <= end["scale"] <= size * 0.9


def video_set(n_videos: int, seed: int = 0, size: int = 24, n_frames: int = 8,
              n_segments: int = 2) -> VideoSet:
    """Generate ``n_videos`` clips (module docstring).

    The first motion is drawn uniformly among the motions possible from the start pose (so
    motion classes are balanced up to that constraint); later ones among those that keep the
    digit on the canvas. Frames are split evenly over the segments.

    Raises
    ------
    ValueError
        ``n_frames`` not a multiple of ``n_segments`` or outside 2..32.
    """
    if not 2 <= n_frames <= 32 or n_segments < 1 or n_frames % n_segments:
        raise ValueError(f"n_frames={n_frames}, n_segments={n_segments}: expected 2..32 frames "
                         "split evenly over the segments")
    digits, dlabels = load_digit_arrays()
    rng = _rng(seed, 3)
    per = n_frames // n_segments
    frames = np.zeros((n_videos, n_frames, size, size), dtype=np.float32)
    digit_ids = np.zeros(n_videos, dtype=np.int64)
    motion_ids = np.zeros((n_videos, n_segments), dtype=np.int64)
    sentences: list[list[str]] = []
    for v in range(n_videos):
        k = int(rng.integers(len(digits)))
        digit_ids[v] = dlabels[k]
        first = MOTION_NAMES[int(rng.integers(len(MOTION_NAMES)))]
        pose = {"cx": size / 2, "cy": size / 2, "scale": size * 0.5, "angle": 0.0,
                "alpha": 0.3 if first == "fade_in" else 1.0}
        where = "in the middle"
        if first in _START:  # start on the side the motion leaves from
            off = size * 0.15
            pose["cx"] += {"left": off, "right": -off}.get(first, 0.0)
            pose["cy"] += {"up": off, "down": -off}.get(first, 0.0)
            where = _START[first]
        if first == "shrink":
            pose["scale"] = size * 0.75
        word = DIGIT_WORDS[dlabels[k]]
        sent = [f"{'an' if word == 'eight' else 'a'} {word} appears {where}"]
        for s in range(n_segments):
            if s == 0:
                motion = first
            else:
                ok = [m for m in MOTION_NAMES if _motion_ok(m, pose, size)]
                motion = ok[int(rng.integers(len(ok)))]
            motion_ids[v, s] = MOTION_NAMES.index(motion)
            end = _pose_path(motion, pose, size)
            for f in range(per):
                w = (f + 1) / per
                p = {key: (1 - w) * pose[key] + w * end[key] for key in pose}
                frames[v, s * per + f] = render_frame(digits[k], size, **p)
            pose = end
            sent.append(MOTIONS[motion])
        sentences.append(sent)
    return VideoSet(frames, digit_ids, motion_ids, sentences)


@dataclass
class VideoInteractions:
    """Users' interactions with videos.

    Attributes
    ----------
    train : list of np.ndarray
        Per user, the warm videos interacted with (ids into the video set).
    test : np.ndarray
        ``[U]`` one held-out cold video per user.
    cold : np.ndarray
        Ids of the cold videos (never in ``train``).
    likes_digits, likes_motions : np.ndarray
        ``[U, 2]`` each user's preferred digits and motions.
    """

    train: list[np.ndarray]
    test: np.ndarray
    cold: np.ndarray
    likes_digits: np.ndarray
    likes_motions: np.ndarray


def affinity(videos: VideoSet, likes_digits: np.ndarray, likes_motions: np.ndarray) -> np.ndarray:
    """``[U, V]`` affinity: 2 x (digit liked) + 1 x (first motion liked) + 0.5 x (any motion
    liked)."""
    d = (videos.digits[None, :, None] == likes_digits[:, None, :]).any(-1)
    first = (videos.motions[None, :, 0, None] == likes_motions[:, None, :]).any(-1)
    anym = (videos.motions[None, :, :, None] == likes_motions[:, None, None, :]).any((-1, -2))
    return 2.0 * d + 1.0 * first + 0.5 * anym


def video_interactions(videos: VideoSet, n_users: int, seed: int = 0, per_user: int = 10,
                       cold_share: float = 0.3, temperature: float = 0.5) -> VideoInteractions:
    """Synthetic users and interactions with cold videos (module docstring).

    A user's ``per_user`` training videos are drawn without replacement from the warm videos
    with probability ``softmax(affinity / temperature)``; its test video from the cold videos
    with the same rule.

    Raises
    ------
    ValueError
        ``cold_share`` outside ``(0, 1)`` or too few warm videos for ``per_user``.
    """
    if not 0.0 < cold_share < 1.0:
        raise ValueError(f"cold_share: expected a value in (0, 1), got {cold_share}")
    rng = _rng(seed, 4)
    n = len(videos)
    perm = rng.permutation(n)
    n_cold = max(1, int(round(cold_share * n)))
    cold, warm = np.sort(perm[:n_cold]), np.sort(perm[n_cold:])
    if len(warm) < per_user:
        raise ValueError(f"per_user={per_user}: only {len(warm)} warm videos")
    likes_d = np.stack([rng.choice(10, 2, replace=False) for _ in range(n_users)])
    likes_m = np.stack([rng.choice(len(MOTION_NAMES), 2, replace=False) for _ in range(n_users)])
    aff = affinity(videos, likes_d, likes_m) / temperature
    train, test = [], np.zeros(n_users, dtype=np.int64)
    for u in range(n_users):
        pw = np.exp(aff[u, warm] - aff[u, warm].max())
        train.append(np.sort(rng.choice(warm, per_user, replace=False, p=pw / pw.sum())))
        pc = np.exp(aff[u, cold] - aff[u, cold].max())
        test[u] = rng.choice(cold, p=pc / pc.sum())
    return VideoInteractions(train, test, cold, likes_d, likes_m)


def class_captions_words() -> list[str]:
    """Every word of the class captions (the closed vocabulary of the LaVIT toy LM)."""
    return sorted({w for c in range(len(class_names())) for w in class_caption(c).split()})
