"""The lab: discovers training algorithms with JAX."""

__version__ = "0.1.0"
