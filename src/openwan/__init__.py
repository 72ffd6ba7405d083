"""openwan: an open, weight-compatible implementation of the Wan video generation models."""

from openwan import checkpoints
from openwan.data.video import save_video
from openwan.models.loading import set_weights_reader
from openwan.pipelines import WanOutput, WanPipeline
from openwan.pipelines.stream import PromptSchedule, StreamConfig, VideoStream, stream

# The composition root: models/ build networks and never read files, checkpoints/ reads files and never builds
# networks. Python runs this file before any openwan.* module, so every from_pretrained finds the reader.
set_weights_reader(checkpoints.read)

__version__ = "0.1.0"
__all__ = ["WanPipeline", "WanOutput", "save_video", "stream", "StreamConfig", "VideoStream", "PromptSchedule",
           "__version__"]
