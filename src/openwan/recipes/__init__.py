"""Reproducible recipes built from openwan's own tools (the bundled demo model)."""
