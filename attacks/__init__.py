"""Attacks on federated sequential recommendation: DV-FSR and the field's baselines."""
