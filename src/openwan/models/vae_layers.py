"""The building blocks of the Wan VAEs (2.1 and 2.2): the per-pass :class:`FeatureCache`, the causal 3D conv,
the channel RMS norm, the residual and attention blocks and the ×2 resampling layers.

Time runs causally in chunks, and every temporal layer keeps the frames it needs from the previous chunk in a
:class:`FeatureCache` created per pass and handed down explicitly, so chunk-by-chunk computes what one pass over
the whole clip would. Module names reproduce the release's checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------ feature cache


class FeatureCache:
    """What each temporal layer kept of the previous chunk, for one encode or decode pass (one per tile).

    Layers take slots in the order they run; every chunk visits the same layers in the same order, so the slot
    index is reset at the start of each chunk and nothing outlives the pass that created the cache.
    """

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self.index = 0
        self.chunk = -1

    def next_chunk(self) -> None:
        assert self.chunk < 0 or self.index == len(self.slots), "a chunk skipped temporal layers"
        self.chunk += 1
        self.index = 0

    @property
    def first(self) -> bool:
        return self.chunk == 0

    def read(self) -> torch.Tensor | None:
        """The current layer's frames from the previous chunk (None in the first chunk)."""
        return self.slots[self.index] if self.index < len(self.slots) else None

    def write(self, frames: torch.Tensor | None) -> None:
        """Store the current layer's frames for the next chunk and move on to the next layer."""
        if self.index == len(self.slots):
            assert self.first, "a later chunk visited more temporal layers than the first"
            self.slots.append(frames)
        else:
            self.slots[self.index] = frames
        self.index += 1

    # A pass that outlives one call (a stream decoding one latent frame at a time) keeps its cache between chunks,
    # and may go back to an earlier one or save it.

    def snapshot(self) -> FeatureCache:
        """A copy to go back to; cheap, because layers replace the tensors in their slots, never write into them."""
        copy = FeatureCache()
        copy.slots, copy.index, copy.chunk = list(self.slots), self.index, self.chunk
        return copy

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The cache between two chunks as (tensors by slot number, JSON-able info), for a file;
        :meth:`from_state` reads it back."""
        assert self.index == len(self.slots), "a cache is saved between chunks"
        tensors = {str(i): t.detach().contiguous().cpu().clone() for i, t in enumerate(self.slots) if t is not None}
        return tensors, {"slots": len(self.slots), "chunk": self.chunk}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], info: dict, device=None, dtype=None) -> FeatureCache:
        """The cache :meth:`state` described, its tensors on ``device`` in ``dtype``."""
        cache = cls()
        cache.slots = [tensors[str(i)].to(device, dtype) if str(i) in tensors else None
                       for i in range(int(info["slots"]))]
        cache.chunk = int(info["chunk"])
        cache.index = len(cache.slots)  # between chunks: the last one visited every slot
        return cache


def last_frames(x: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` frames of ``x`` [B, C, T, H, W] for the next chunk.

    A view would keep the whole chunk alive until the next one: copy unless the chunk is barely longer.
    """
    tail = x[:, :, -n:]
    return tail.clone() if x.shape[2] > n + 1 else tail


def frames_first(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [(B T), C, H, W], for layers that work on each frame alone."""
    return x.transpose(1, 2).flatten(0, 1)


def frames_back(y: torch.Tensor, batch: int) -> torch.Tensor:
    """[(B T), C, H, W] -> [B, C, T, H, W]."""
    return y.unflatten(0, (batch, -1)).transpose(1, 2)


# ------------------------------------------------------------------------------------------- layers


CPU_CHANNELS_LAST = True  # benchmarks/bench_models.py turns it off to time the ordinary layout beside it
CHANNELS_LAST_MAX_IN = 64  # convs with more input channels than this keep the ordinary layout
CPU_ONEDNN_CONV3D = True  # benchmarks/bench_models.py turns it off to time torch's own choice beside it


def cpu_conv_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a conv on ``x`` should take it: on CPU, for convs of at most ``CHANNELS_LAST_MAX_IN`` input
    channels, in channels-last layout, which oneDNN's kernels take without reordering it on every call: faster for
    narrow convs such as the demo VAE's, slower for the released VAE's wide ones (figures in docs/benchmarks.md). A
    copy per call, so parameters, state dicts and gradients keep their ordinary layout; the sums are the same (to
    float32 rounding)."""
    if x.device.type != "cpu" or not CPU_CHANNELS_LAST or weight.shape[1] > CHANNELS_LAST_MAX_IN:
        return weight
    return weight.contiguous(memory_format=torch.channels_last_3d if weight.ndim == 5 else torch.channels_last)


def use_onednn_conv3d(x: torch.Tensor) -> bool:
    """Whether a 3D conv on ``x`` goes straight to oneDNN: on CPU in float32, where torch's own choice takes its
    slow im2col kernel for a batch of one with few channels (the streaming decoder's chunks, the demo VAE): oneDNN
    is 2-8x faster there, the same sums to float32 rounding, with gradients."""
    return CPU_ONEDNN_CONV3D and x.device.type == "cpu" and x.dtype == torch.float32 and \
        torch.backends.mkldnn.is_available()


class Conv2d(nn.Conv2d):
    """nn.Conv2d with the CPU weight layout of :func:`cpu_conv_weight` (same parameters and state-dict keys)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(x, cpu_conv_weight(x, weight), bias)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded on both sides in space and only in front in time (2·p_t frames).

    With a cache, the front padding is the previous chunk's last input frames instead of zeros (zeros in the
    first chunk), so running chunk by chunk computes exactly what one pass over the whole video would.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0) -> None:
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_pad = 2 * pad_t
        assert self.time_pad in (0, self.kernel_size[0] - 1), "pads kernel_t - 1 frames in front"

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        x, weight = self._with_history(x, cache) if self.time_pad else (x, self.weight)
        if x.shape[2] == weight.shape[2]:
            return self._one_frame(x, weight)
        return self._conv_forward(x, weight, self.bias)  # spatial zero padding happens inside the conv

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if use_onednn_conv3d(x):
            return torch.ops.aten.mkldnn_convolution(x, cpu_conv_weight(x, weight), bias, self.padding,
                                                     self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, cpu_conv_weight(x, weight), bias)

    def _with_history(self, x: torch.Tensor, cache: FeatureCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x preceded by its time_pad history frames (cached, else zeros), and the weight to apply."""
        prev = cache.read() if cache is not None else None
        if prev is not None:
            x = torch.cat([prev, x], dim=2)
            cache.write(last_frames(x, self.time_pad))
            return x, self.weight
        if cache is not None:  # keep the zero-padded history, so later chunks never pad
            missing = max(0, self.time_pad - x.shape[2])
            cache.write(F.pad(x[:, :, -self.time_pad:], (0, 0, 0, 0, missing, 0)))
        if x.shape[2] == 1:  # one frame after zero history: skip the taps that would see only zeros (exact)
            return x, self.weight[:, :, -1:]
        return F.pad(x, (0, 0, 0, 0, self.time_pad, 0)), self.weight

    def _one_frame(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """A conv with one output frame is a 2D conv over (channels x taps): the same sums, faster kernels."""
        b, c, t, h, w = x.shape
        y = F.conv2d(x.reshape(b, c * t, h, w), cpu_conv_weight(x, weight.flatten(1, 2)), self.bias,
                     self.stride[1:], self.padding[1:])
        return y.unsqueeze(2)  # [B, C_out, 1, H', W']


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned gain; computed in float32."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics and scaling whatever the input dtype; the eps is F.normalize's
        norm = channel_norm(x).clamp_min(1e-12)
        return (x / norm * (self.gamma.float() * self.scale)).to(x.dtype)


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """The float32 L2 norm of ``x`` [B, C, ...] over its channels, keeping the channel dim.

    On CPU, ``torch.linalg.vector_norm`` over a dimension that is not the innermost takes a strided path many
    times slower than a sum of squares, so the sum of squares is used there. On GPU ``vector_norm`` is fast and
    never makes a float32 copy of a bfloat16 ``x``."""
    if x.device.type == "cpu":
        xf = x.float()
        return (xf * xf).sum(1, keepdim=True).sqrt()
    return torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Positions 0..6 are those of the reference's nn.Sequential (they name the checkpoint keys).
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        norm1, act, conv1, norm2, _, dropout, conv2 = self.residual
        h = conv1(act(norm1(x)), cache)
        h = conv2(dropout(act(norm2(h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (nothing crosses time, so no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        qkv = self.to_qkv(self.norm(frames_first(x)))  # [(B T), 3C, H, W]
        qkv = qkv.flatten(2).transpose(1, 2).contiguous()  # [(B T), HW, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # 3 x [(B T), 1, HW, C]
        y = F.scaled_dot_product_attention(q, k, v)  # [(B T), 1, HW, C]
        y = self.proj(y.squeeze(1).transpose(1, 2).unflatten(2, (h, w)))  # [(B T), C, H, W]
        return x + frames_back(y, b)


class Resample(nn.Module):
    """Spatial ×2 up/down sampling per frame; the 3D modes also resample time through a cached conv.

    downsample3d: a stride-2 temporal conv over (last frame of the previous chunk, this chunk); the first
    chunk has nothing to pair with and passes through. upsample3d: a temporal conv to 2·C channels whose
    halves become two output frames; the first latent frame is not doubled (1 frame out, then 4 per latent
    frame).
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_dim: int | None = None) -> None:
        super().__init__()
        assert mode in self.MODES, mode
        self.mode = mode
        if mode.startswith("upsample"):
            # nearest-exact at exactly ×2 copies values, so it is exact in any dtype; Wan2.1 halves the channels
            # here, Wan2.2 keeps them (upsample_dim=dim)
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          Conv2d(dim, upsample_dim or dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "upsample3d" and cache.first:
            cache.write(None)  # the next chunk's time_conv then starts from zero history
            frames = frames_first(x)
        elif self.mode == "upsample3d":
            x = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            # channel halves are consecutive frames: [B, T, 2, C, H, W] -> [(B T 2), C, H, W]
            frames = x.unflatten(1, (2, -1)).permute(0, 3, 1, 2, 4, 5).flatten(0, 2)
        else:
            frames = frames_first(x)
        x = frames_back(self.resample(frames), b)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x

    def _downsample_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if cache.first:
            cache.write(x[:, :, -1:])
            return x
        prev = cache.read()
        cache.write(last_frames(x, 1))
        return self.time_conv(torch.cat([prev, x], dim=2))
