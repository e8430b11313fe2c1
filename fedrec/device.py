"""Where tensors live: the ``device`` setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``).

Data stays in numpy on the CPU; a batch becomes tensors on the run's device when it is built
(:func:`fedrec.data.batching.to_tensor`), the model's parameters are moved there once, and
every tensor the engines, attacks, defenses and evaluation create without naming a device is
created there too: a run executes inside :func:`device_scope`, which makes the device torch's
default for the duration of the run (``torch.device`` as a context manager). On the CPU the
scope is a no-op, so CPU runs execute exactly the code (and give exactly the numbers) they did
before the setting existed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from fedrec.errors import ConfigError

_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_problem(value: str) -> str | None:
    """What is wrong with a ``device`` setting on this machine (None: nothing)."""
    if not _PATTERN.match(value):
        return "expected auto, cpu, cuda or cuda:N"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            return ("CUDA is not available on this machine (torch.cuda.is_available() is "
                    "False); use cpu or auto")
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def check_device(value: str) -> str:
    """Validate the spelling of a ``device`` setting and that it exists on this machine.

    Parameters
    ----------
    value : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    str
        ``value`` unchanged.

    Raises
    ------
    ConfigError
        Another spelling, or CUDA asked for where ``torch.cuda.is_available()`` is false, or
        a GPU index this machine does not have.
    """
    problem = device_problem(value)
    if problem is not None:
        raise ConfigError(f"device={value!r}: {problem}")
    return value


def resolve_device(value: str) -> torch.device:
    """The :class:`torch.device` of a ``device`` setting (``auto``: CUDA when available).

    Raises
    ------
    ConfigError
        As :func:`check_device`.
    """
    check_device(value)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(value)


@contextlib.contextmanager
def device_scope(device: torch.device | str) -> Iterator[torch.device]:
    """Make ``device`` torch's default device inside the block (nothing changes for the CPU).

    Yields
    ------
    torch.device
        The resolved device.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cpu":
        yield dev
        return
    with dev:
        yield dev


def current_device() -> torch.device:
    """The device tensors are created on by default here (CPU outside :func:`device_scope`)."""
    return torch.get_default_device()


def cuda_rng_state() -> list[torch.Tensor]:
    """The CUDA generators' states when CUDA is in use in this process (else empty): dropout on
    a GPU draws from them, so a checkpoint keeps them to resume to the same numbers."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(torch.cuda.get_rng_state_all())
    return []


def set_cuda_rng_state(states: list[torch.Tensor] | None) -> None:
    """Restore what :func:`cuda_rng_state` returned (nothing to do when it was empty)."""
    if states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states)


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``.

    Checkpoints are read onto the CPU; a run resumed on a GPU moves its parameters and server
    state back with this (RNG states stay on the CPU, where torch expects them).
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
