"""openwan: an open, weight-compatible implementation of the Wan video generation models."""

__version__ = "0.1.0"
