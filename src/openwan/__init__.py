"""openwan: an open, weight-compatible implementation of the Wan video generation models."""

from openwan.data.video import save_video
from openwan.pipelines import WanOutput, WanPipeline

__version__ = "0.1.0"
__all__ = ["WanPipeline", "WanOutput", "save_video", "__version__"]
