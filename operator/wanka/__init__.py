"""Wanka: a Kubernetes operator that makes a GPU fleet behave like one computer."""

__version__ = "0.1.0"
