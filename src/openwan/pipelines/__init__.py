"""Generation: one pipeline shared by every task, with small per-task conditioning builders."""

from openwan.pipelines.wan import WanOutput, WanPipeline

__all__ = ["WanPipeline", "WanOutput"]
