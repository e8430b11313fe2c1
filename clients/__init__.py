"""Federated clients: how a client turns (global params, its data, round config) into an update."""
