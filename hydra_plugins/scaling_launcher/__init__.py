"""Hydra plugins shipped with scaling (found by Hydra through the hydra_plugins namespace)."""
