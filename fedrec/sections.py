"""The base of every validated config section, and shared field types.

Used by :mod:`fedrec.config` and by the sections that live beside their method
(:mod:`fedrec.data.domains`), which :mod:`fedrec.config` validates lazily; keeping the base here
lets both import it without importing each other.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: A random seed: a non-negative integer that fits numpy's and torch's 64-bit seed arguments.
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: An Adam moment decay rate, in ``[0, 1)``.
Beta = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated, floats must
    be finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)
