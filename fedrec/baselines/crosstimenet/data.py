"""CrossTimeNet's domains: the registered UCR/UEA sets at a fixed length and patch size, and
generated sine-mixture domains for tests and examples.

Each domain is one classification problem with its own channel count ``C``, length ``L`` and
patch length ``wl`` (one token per ``wl`` steps). Real domains are read with
:func:`fedrec.data.timeseries.load` (official train/test files, a seeded stratified validation
split carved from train) and brought to a fixed length: equal-length sets are cropped
(ArrowHead 251 -> 250, so that ``wl`` divides it), JapaneseVowels (7-29 steps) is linearly
resampled to 25. ``L`` and ``wl`` follow the spec's small-scale table
(``../shared/specs/ssl_methods.md`` section 1.9), aiming at 24-30 tokens per series. Every series
is then min-max scaled per sample over all channels to [-1, 1] and multiplied by 2.5
(:func:`fedrec.tokenizers.timeseries.scale_series`, the code's tokenizer input scaling, used here
for training and inference alike).

Generated domains (no real data needed): ``sines1`` (1 channel, 32 steps, 3 classes) and
``sines3`` (3 channels, 48 steps, 2 classes). A series of class ``c`` is a sum of two sinusoids
whose frequencies depend on ``c`` (:data:`SINE_FREQS`), with a random phase per series and a
fixed phase offset per channel, random amplitudes in [0.5, 1.5] and Gaussian noise of standard
deviation 0.1. Train and test series are independent draws; the validation split is carved from
train like for real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedrec.data import timeseries as T
from fedrec.errors import ConfigError
from fedrec.registry import suggestion
from fedrec.tokenizers.timeseries import scale_series

#: registered dataset -> (fixed length L, patch length wl); the spec's small-scale table.
SETUP: dict[str, tuple[int, int]] = {
    "BasicMotions": (100, 4),
    "JapaneseVowels": (25, 1),
    "GunPoint": (150, 5),
    "ArrowHead": (250, 10),
    "ItalyPowerDemand": (24, 1),
}


@dataclass(frozen=True)
class SineDomain:
    """Shape of a generated sine-mixture domain."""

    channels: int
    length: int
    wl: int
    n_classes: int
    n_train: int
    n_test: int


#: generated domains (module docstring)
SYNTHETIC: dict[str, SineDomain] = {
    "sines1": SineDomain(channels=1, length=32, wl=2, n_classes=3, n_train=60, n_test=60),
    "sines3": SineDomain(channels=3, length=48, wl=4, n_classes=2, n_train=40, n_test=40),
}

#: class -> the two frequencies (cycles per series) of its sinusoids
SINE_FREQS = ((1.0, 3.0), (2.0, 5.0), (4.0, 7.0))


def domain_names() -> list[str]:
    """Every domain name a config may use."""
    return list(SETUP) + list(SYNTHETIC)


def check_domain(name: str, key: str) -> None:
    """Raise a one-line :class:`ConfigError` under ``key`` unless ``name`` is a domain."""
    if name not in SETUP and name not in SYNTHETIC:
        known = domain_names()
        raise ConfigError(f"{key}: {name!r} is not a CrossTimeNet domain{suggestion(name, known)}"
                          f"; expected one of {', '.join(known)}")


def sine_mixture(spec: SineDomain, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` series of a generated domain (balanced classes in a seeded order).

    Returns
    -------
    X, y : ndarray float32 ``[n, C, L]``, ndarray int64 ``[n]``
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % spec.n_classes).astype(np.int64)
    t = np.linspace(0.0, 1.0, spec.length, endpoint=False)[None, None, :]
    freqs = np.array([SINE_FREQS[c] for c in y])  # [n, 2]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    offset = np.linspace(0.0, np.pi / 2, spec.channels)[None, :, None]
    amp = rng.uniform(0.5, 1.5, size=(n, 2, 1, 1))
    X = sum(amp[:, k] * np.sin(2 * np.pi * freqs[:, k, None, None] * t + phase + offset)
            for k in range(2))
    X = X + 0.1 * rng.standard_normal((n, spec.channels, spec.length))
    return X.astype(np.float32), y


@dataclass
class Domain:
    """One domain's scaled series and labels.

    Attributes
    ----------
    name : str
    X : dict ``split -> Tensor [n, C, L]`` for ``train``, ``valid``, ``test``
    y : dict ``split -> LongTensor [n]``
    n_classes, channels, length, wl : int
    """

    name: str
    X: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    n_classes: int
    channels: int
    length: int
    wl: int

    @property
    def n_tokens(self) -> int:
        """Tokens per series."""
        return self.length // self.wl

    def sizes(self) -> str:
        """``train/valid/test`` counts."""
        return "/".join(str(len(self.y[s])) for s in ("train", "valid", "test"))


def fixed_length(data: T.TimeSeriesData, length: int) -> np.ndarray:
    """Crop equal-length data to ``length`` steps, else resample every case to ``length``."""
    if data.equal_length and int(data.lengths[0]) >= length:
        return T.crop(data, length)
    return T.resample(data, length)


def load_domain(name: str, root: str | Path | None, *, val_fraction: float = 0.2,
                seed: int = 0) -> Domain:
    """A domain's train/valid/test series (scaled) and labels.

    Parameters
    ----------
    name : str
        A key of :data:`SETUP` (read from ``root`` / ``$FEDREC_DATA``) or of :data:`SYNTHETIC`.
    root : str or Path, optional
        Data root for the registered sets.
    val_fraction : float
        Share of each class of the official train file held out for validation.
    seed : int
        Seed of the validation split (generated series are the same for every seed).

    Raises
    ------
    ConfigError
        Unknown name.
    DatasetNotFoundError, DataFormatError
        Missing or malformed files (see :func:`fedrec.data.timeseries.load`).
    """
    check_domain(name, "domain")
    if name in SYNTHETIC:
        spec = SYNTHETIC[name]
        base = 1000 * (list(SYNTHETIC).index(name) + 1)
        Xtr, ytr = sine_mixture(spec, spec.n_train, base)
        Xte, yte = sine_mixture(spec, spec.n_test, base + 1)
        kept, held = T.stratified_split(ytr, val_fraction, seed)
        parts = {"train": (Xtr[kept], ytr[kept]), "valid": (Xtr[held], ytr[held]),
                 "test": (Xte, yte)}
        n_classes, channels, length, wl = spec.n_classes, spec.channels, spec.length, spec.wl
    else:
        length, wl = SETUP[name]
        s = T.load(name, root, val_fraction=val_fraction, seed=seed)
        parts = {"train": (fixed_length(s.train, length), s.train.y),
                 "valid": (fixed_length(s.val, length), s.val.y),
                 "test": (fixed_length(s.test, length), s.test.y)}
        n_classes, channels = len(s.class_names), s.n_channels
    X = {k: scale_series(v[0]) for k, v in parts.items()}
    y = {k: torch.as_tensor(np.asarray(v[1]), dtype=torch.long) for k, v in parts.items()}
    return Domain(name, X, y, n_classes, channels, length, wl)
