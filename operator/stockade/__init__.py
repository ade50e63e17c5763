"""Stockade: a Kubernetes operator that fences in autonomous AI agents."""

__version__ = "0.1.0"
