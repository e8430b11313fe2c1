"""The converged-model protocol: start a federated run from another run's global parameters.

Deployed recommenders are trained to convergence before anyone attacks them. The protocol is
two runs: a benign federated pre-training run with early stopping on a validation metric
(``federation.early_stop_metric``), which writes its selected global parameters to
``model.pt`` in its run directory, and attack runs that start from them
(``federation.init_from``), for ``federation.epochs`` epochs with ER/HR evaluated every epoch.
Every cell of a grid can point at the same pre-training run, so it is trained once.

Only the global parameters carry over: the round schedule, the server optimizer (its learning
rate schedule restarts at ``server_lr``) and the defense's state start fresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fedrec.errors import ConfigError
from fedrec.results import atomic_write, load_checkpoint_file

#: File of a federated run's selected (or final) global parameters.
MODEL_FILE = "model.pt"

Params = dict[str, torch.Tensor]


def save_model(run_path: Path, params: Mapping[str, torch.Tensor]) -> Path:
    """Write ``params`` to ``<run_path>/model.pt`` atomically; return the path."""
    path = Path(run_path) / MODEL_FILE
    state = {n: v.detach().cpu().clone() for n, v in params.items()}
    atomic_write(path, lambda fh: torch.save(state, fh), "wb")
    return path


def load_initial_params(source: str | Path, like: Mapping[str, torch.Tensor]) -> Params:
    """Global parameters to start from: a run directory's ``model.pt`` or a ``.pt`` file.

    Parameters
    ----------
    source : str or Path
        ``federation.init_from``.
    like : mapping
        The freshly built model's parameters (names, shapes and dtypes to match).

    Raises
    ------
    ConfigError
        Missing file, or parameters that do not match the model (one line naming the key).
    """
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"federation.init_from={str(source)!r}: no {MODEL_FILE} there (run the "
                          "pre-training config first; it writes model.pt when it finishes)")
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"federation.init_from={str(source)!r}: {path} does not hold a mapping "
                          "of parameter tensors")
    missing = sorted(set(like) - set(state))
    extra = sorted(set(state) - set(like))
    if missing or extra:
        raise ConfigError(f"federation.init_from={str(source)!r}: parameters differ from the model "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    out: Params = {}
    for name, ref in like.items():
        val = state[name]
        if tuple(val.shape) != tuple(ref.shape):
            raise ConfigError(f"federation.init_from={str(source)!r}: {name} has shape "
                              f"{tuple(val.shape)}, the model expects {tuple(ref.shape)}")
        if not bool(torch.isfinite(val).all()):
            raise ConfigError(f"federation.init_from={str(source)!r}: {name} is not finite")
        out[name] = val.to(dtype=ref.dtype, device=ref.device).clone()
    return out
