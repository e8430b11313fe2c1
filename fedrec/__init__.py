"""fedrec: a lab for federated sequential recommendation security."""

__version__ = "0.1.0"
