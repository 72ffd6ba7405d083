"""Data: video I/O, manifests, datasets."""
