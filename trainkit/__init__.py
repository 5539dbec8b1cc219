"""trainkit: a config-driven training CLI for PyTorch."""

__version__ = "0.1.0"
