"""Steward: a production backend for mobile apps and AI agents."""

__version__ = "0.1.0"
