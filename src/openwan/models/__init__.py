"""The Wan networks: the DiT, the Wan2.1 and Wan2.2 VAEs (one class, :class:`WanVAE`), and loaders for the umT5
and CLIP encoders (transformers models)."""

from openwan.models.dit import WanDiT
from openwan.models.image_encoder import load_clip_encoder
from openwan.models.text_encoder import load_umt5_encoder
from openwan.models.vace import WanVaceDiT, load_any_dit
from openwan.models.vae import WanVAE

__all__ = ["WanDiT", "WanVaceDiT", "WanVAE", "load_any_dit", "load_umt5_encoder", "load_clip_encoder"]
