"""Turn a :class:`~fedrec.config.DataConfig` into a preprocessed dataset and its split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrec.config import DataConfig
from fedrec.data.dataset import SequenceDataset
from fedrec.data.formats import read_file
from fedrec.data.preprocess import preprocess, remap_items
from fedrec.data.registry import locate
from fedrec.data.split import LeaveOneOut, leave_one_out
from fedrec.data.synthetic import SyntheticSpec, generate

#: ``SequenceDataset.meta`` flag: items were renumbered when read (see :func:`read_dataset`).
RENUMBERED = "renumbered_on_read"


def read_dataset(path: str | Path, fmt: str, name: str | None = None) -> SequenceDataset:
    """Read a sequence file into a dataset.

    The item vocabulary is the largest id seen, so the shipped ids are kept. When that id is
    larger than the number of interactions, some ids in ``1..max`` certainly have no
    interaction and :func:`load_dataset` would renumber them anyway; they are then renumbered
    here already (:func:`~fedrec.data.preprocess.remap_items`, ``item_ids`` keeps the file's
    ids), so that no array ever has as many entries as the largest id (which may be 10^18).
    """
    users, seqs = read_file(path, fmt)
    n_items = int(max(int(s.max()) for s in seqs))
    ds = SequenceDataset(seqs, n_items, name or Path(path).parent.name or Path(path).stem,
                         user_ids=np.asarray(users, dtype=np.int64))
    if n_items > ds.n_interactions:
        ds = remap_items(ds)
        ds.meta[RENUMBERED] = True
    return ds


def load_dataset(cfg: DataConfig) -> SequenceDataset:
    """Load and preprocess the configured dataset.

    ``data.path`` (a file in ``data.format``) wins over ``data.name``; ``synthetic`` generates
    the embedded default data; other names are looked up by :func:`fedrec.data.registry.locate`.
    Preprocessing: k-core, minimum length, optional truncation, then id remapping only when
    some id in ``1..max`` has no interaction left (so the shipped ids are kept when possible).
    """
    if cfg.path:
        raw = read_dataset(cfg.path, cfg.format, cfg.name if cfg.name != "synthetic" else None)
    elif cfg.name == "synthetic":
        raw = generate(SyntheticSpec(**cfg.synthetic.model_dump()))
    else:
        path, fmt = locate(cfg.name, cfg.root)
        raw = read_dataset(path, fmt, cfg.name)
    ds = preprocess(raw, kcore_k=cfg.kcore, min_len=cfg.min_len, remap=False,
                    truncate_len=cfg.truncate)
    # ids with no interaction left (or sparse ids renumbered when read): renumber them in order
    # of first appearance after filtering, so both paths give the same dataset
    if ds.meta.get(RENUMBERED) or (ds.item_counts()[1:] == 0).any():
        ds = remap_items(ds)
    return ds


def load_split(cfg: DataConfig) -> LeaveOneOut:
    """Load the configured dataset and split it leave-one-out."""
    return leave_one_out(load_dataset(cfg))
