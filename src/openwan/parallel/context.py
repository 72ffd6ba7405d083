"""Context parallelism for the DiT: the token sequence is split across ranks and self-attention is computed
over the whole sequence with Ulysses, Ring, or both (2D).

- ``TokenSplit`` pads the tokens to a multiple of the group size, keeps this rank's equal shard of them (and of
  the RoPE tables and Wan2.2's per-token time embeddings) from the first block through the head, and gathers
  the head's output (pt·ph·pw·out_dim = 64 channels a token, far less than the model width) at the end. The
  padded keys are masked, so the result equals the one-process forward; padded queries are dropped.
- Ulysses: one all-to-all turns [B, L/n, H, D] shards of q, k, v into [B, L, H/n, D] (every token, some
  heads), attention runs locally, and a second all-to-all brings the output back. Needs H % n == 0.
- Ring: each rank keeps its query block and passes its K/V block around the ring (P2P, the next transfer in
  flight while the current block is computed); partial outputs are merged by their log-sum-exp. The backward
  passes K/V around again with their gradient accumulators, which end where they started.
- 2D: Ulysses inside each group of the "ulysses" mesh dimension, then Ring across the "ring" dimension on the
  [B, L/ring, H/ulysses, D] blocks that the all-to-all leaves.

Cross-attention is untouched: each rank attends from its query shard to the full text context.
``cfg_parallel_forward`` evaluates the two branches of classifier-free guidance on two ranks.
``context_parallel_comm`` is the analytic model of the bytes all of this sends; ``count_sent_bytes`` measures them.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator

import torch
import torch.distributed as dist

from openwan.configs import DiTConfig
from openwan.models.layers import attention

# ------------------------------------------------------------------------------------ byte counting

_SENT: Counter | None = None


@contextlib.contextmanager
def count_sent_bytes() -> Iterator[Counter]:
    """Count the bytes this rank sends in context-parallel collectives, by kind ("all_to_all", "ring",
    "gather", "cfg"), measured from the tensors handed to torch.distributed (chunks kept locally excluded)."""
    global _SENT
    previous, _SENT = _SENT, Counter()
    try:
        yield _SENT
    finally:
        _SENT = previous


def _sent(kind: str, nbytes: int) -> None:
    if _SENT is not None:
        _SENT[kind] += nbytes


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ---------------------------------------------------------------------------------------- collectives


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Chunk ``scatter_dim`` across the group's ranks and concatenate what arrives along ``gather_dim``."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()  # [n, ...]: chunk i goes to rank i
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    _sent("all_to_all", _nbytes(send) - _nbytes(send[rank]))
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.group, gather_dim, scatter_dim), None, None, None


class _GatherTokens(torch.autograd.Function):
    """All-gather along dim 1. The gathered tensor is used identically on every rank of the group (the loss
    is replicated there), so the backward keeps this rank's slice of the gradient and sends nothing."""

    @staticmethod
    def forward(ctx, x, group):
        n = dist.get_world_size(group)
        ctx.n, ctx.rank = n, dist.get_rank(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x, group=group)
        _sent("gather", _nbytes(x) * (n - 1))
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(ctx.n, dim=1)[ctx.rank], None


class _RingShift:
    """Send a tensor to the next rank of the ring and receive the previous rank's; ``wait()`` returns it."""

    def __init__(self, t: torch.Tensor, group: dist.ProcessGroup, tag: int):
        n, rank = dist.get_world_size(group), dist.get_rank(group)
        self._send = t.contiguous()  # kept alive until the transfer is done
        self._recv = torch.empty_like(self._send)
        self._reqs = dist.batch_isend_irecv([
            dist.P2POp(dist.isend, self._send, group=group, group_peer=(rank + 1) % n, tag=tag),
            dist.P2POp(dist.irecv, self._recv, group=group, group_peer=(rank - 1) % n, tag=tag),
        ])
        _sent("ring", _nbytes(self._send))

    def wait(self) -> torch.Tensor:
        for req in self._reqs:
            req.wait()
        return self._recv


# -------------------------------------------------------------------------------------- ring attention


def _valid_keys(block_index: int, block: int, valid_len: int | None) -> int:
    """How many keys of block ``block_index`` lie before the padding (global positions < valid_len)."""
    if valid_len is None:
        return block
    return max(0, min(block, valid_len - block_index * block))


def _rows(q: torch.Tensor, keys: int, max_scores: int) -> int:
    """Query rows per chunk so that a chunk's score matrix [B, H, rows, keys] holds at most max_scores entries."""
    return max(1, max_scores // (q.shape[0] * q.shape[1] * keys))


def _block_attention(q, k, v, scale: float, max_scores: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, H, Lq, D] to one K/V block [B, H, Lk, D]: float32 output and its log-sum-exp [B, H, Lq]."""
    outs, lses = [], []
    for qc in q.split(_rows(q, k.shape[2], max_scores), dim=2):
        s = torch.matmul(qc, k.transpose(-1, -2)).float() * scale  # [B, H, rows, Lk]
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse[..., None])
        outs.append(torch.matmul(p.to(v.dtype), v).float())
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _block_grads(q, dout, delta, lse, k, v, scale: float, max_scores: int):
    """Gradients from one K/V block (all float32, [B, H, L, D]) given the merged output's lse and
    delta = rowsum(dO * O): P = exp(S - lse) is this block's share of the full softmax."""
    rows = _rows(q, k.shape[2], max_scores)
    dq, dk, dv = [], torch.zeros_like(k), torch.zeros_like(v)
    for qc, doc, dc, lc in zip(q.split(rows, 2), dout.split(rows, 2), delta.split(rows, 2), lse.split(rows, 2)):
        p = torch.exp(torch.matmul(qc, k.transpose(-1, -2)) * scale - lc[..., None])  # [B, H, rows, Lk]
        ds = p * (torch.matmul(doc, v.transpose(-1, -2)) - dc) * scale
        dq.append(torch.matmul(ds, k))
        dk += torch.matmul(ds.transpose(-1, -2), qc)
        dv += torch.matmul(p.transpose(-1, -2), doc)
    return torch.cat(dq, dim=2), dk, dv


def _merge(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax: combine two partial results, each normalised over its own keys, by their log-sum-exps."""
    new = torch.logaddexp(lse, block_lse)  # finite once any block had a valid key; exp(-inf - new) = 0 before
    return out * torch.exp(lse - new)[..., None] + block_out * torch.exp(block_lse - new)[..., None], new


class _RingAttention(torch.autograd.Function):
    # Tensors inside are [B, H, L, D]; this rank's block is block number group.rank() of the sequence.

    @staticmethod
    def forward(ctx, q, k, v, group, valid_len, max_scores):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, Lb, D]
        rank, n, block = dist.get_rank(group), dist.get_world_size(group), k.shape[2]
        scale = q.shape[-1] ** -0.5
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])  # [2, B, H, Lb, D]
        for step in range(n):
            shift = _RingShift(kv, group, tag=0) if step < n - 1 else None  # overlaps the compute below
            keys = _valid_keys((rank - step) % n, block, valid_len)
            if keys:
                partial = _block_attention(q, kv[0, :, :, :keys], kv[1, :, :, :keys], scale, max_scores)
                out, lse = _merge(out, lse, *partial)
            if shift is not None:
                kv = shift.wait()
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.valid_len, ctx.scale, ctx.max_scores = group, valid_len, scale, max_scores
        return out.transpose(1, 2)  # [B, Lb, H, D]

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        rank, n, block = dist.get_rank(group), dist.get_world_size(group), k.shape[2]
        dout, qf = grad_out.transpose(1, 2).float(), q.float()  # [B, H, Lb, D]
        delta = (dout * out.float()).sum(-1, keepdim=True)  # [B, H, Lb, 1]: rowsum(dO * O)
        dq = torch.zeros_like(qf)
        kv = torch.stack([k, v])
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)  # gradient of the block held now
        for step in range(n):
            shift = _RingShift(kv, group, tag=0) if step < n - 1 else None
            keys = _valid_keys((rank - step) % n, block, ctx.valid_len)
            if keys:
                kb, vb = kv[0, :, :, :keys].float(), kv[1, :, :, :keys].float()
                dq_b, dk_b, dv_b = _block_grads(qf, dout, delta, lse, kb, vb, scale, ctx.max_scores)
                dq += dq_b
                dkv[0, :, :, :keys] += dk_b
                dkv[1, :, :, :keys] += dv_b
            # The accumulator travels with its block; after the last step it arrives back at the block's owner.
            dkv = _RingShift(dkv, group, tag=1).wait()
            if shift is not None:
                kv = shift.wait()
        dk, dv = dkv.to(k.dtype).unbind(0)
        return dq.to(q.dtype).transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None, None


# Score-matrix entries one chunk of a block may hold (float32: 256 MiB); query rows are taken in chunks below it.
MAX_SCORES = 2**26


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup,
                   valid_len: int | None = None, max_scores: int = MAX_SCORES) -> torch.Tensor:
    """Attention of this rank's query block to the keys of all ranks: q, k, v [B, Lb, H, D] are block number
    ``rank`` of a sequence split into ``group.size()`` equal blocks; keys at positions >= ``valid_len`` are
    masked. Returns [B, Lb, H, D]; differentiable. Each block's scores are formed ``max_scores`` at a time."""
    return _RingAttention.apply(q, k, v, group, valid_len, max_scores)


# --------------------------------------------------------------------------- the model's two seams


def _valid_len(key_lens: torch.Tensor | None) -> int | None:
    if key_lens is None:
        return None
    lens = key_lens.tolist()  # TokenSplit makes it on the CPU: no device sync per layer
    assert min(lens) == max(lens), "context parallel pads every sample to the same length"
    return int(lens[0])


class ContextParallelAttention:
    """The self-attention backend (``SelfAttention.attn_backend``) for a sequence sharded over
    ulysses × ring ranks; called like ``layers.attention`` with ``key_lens`` = the unpadded length."""

    def __init__(self, ulysses_group: dist.ProcessGroup | None = None,
                 ring_group: dist.ProcessGroup | None = None, max_scores: int = MAX_SCORES):
        self.ulysses_group, self.ring_group, self.max_scores = ulysses_group, ring_group, max_scores
        self.ulysses = dist.get_world_size(ulysses_group) if ulysses_group is not None else 1
        self.ring = dist.get_world_size(ring_group) if ring_group is not None else 1

    def __call__(self, q, k, v, key_lens=None, attn_mask=None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("context-parallel attention takes padding through key_lens only; pass no attn_mask.")
        valid_len = _valid_len(key_lens)
        if self.ulysses > 1:
            if q.shape[2] % self.ulysses:
                raise ValueError(f"Ulysses needs the {q.shape[2]} heads to divide by its size {self.ulysses}; "
                                 "choose a ulysses size that divides the number of heads.")
            qkv = torch.stack([q.to(v.dtype), k.to(v.dtype), v])  # [3, B, L/n, H, D]: one all-to-all for all
            q, k, v = _AllToAll.apply(qkv, self.ulysses_group, 3, 2).unbind(0)  # [B, L/ring, H/u, D] each
        if self.ring > 1:
            out = ring_attention(q, k, v, self.ring_group, valid_len, self.max_scores)
        else:
            out = attention(q, k[:, :valid_len], v[:, :valid_len])  # padding sits at the end: drop it
        if self.ulysses > 1:
            out = _AllToAll.apply(out, self.ulysses_group, 1, 2)  # [B, L/n, H, D]
        return out


class TokenSplit:
    """``WanDiT.token_split``: keeps this rank's shard of the (padded) tokens between the patch embedding and
    the head, and gathers the head's output. Shard i of the group holds tokens [i·L/n, (i+1)·L/n)."""

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def shard(self, x, e, e0, rope):
        """x [B, L, D], e [B, 1|L, D], e0 [B, 1|L, 6, D], rope (cos, sin) [L, Dh] -> this rank's shards and
        key_lens ([B] on the CPU, the unpadded length; None when L divides evenly)."""
        length = x.shape[1]
        pad = -length % self.size
        x = self._take(x, 1, pad)
        if e.shape[1] > 1:  # Wan2.2 per-token timesteps
            e, e0 = self._take(e, 1, pad), self._take(e0, 1, pad)
        rope = tuple(self._take(t, 0, pad) for t in rope)
        key_lens = torch.full((x.shape[0],), length, dtype=torch.long) if pad else None
        return x, e, e0, rope, key_lens

    def shard_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """Another token stream [B, L, D] on the same grid (a VACE context): this rank's padded shard, as x's."""
        return self._take(t, 1, -t.shape[1] % self.size)

    def gather(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """[B, L_pad/n, C] on every rank -> [B, length, C] on every rank."""
        return _GatherTokens.apply(x, self.group)[:, :length]

    def _take(self, t: torch.Tensor, dim: int, pad: int) -> torch.Tensor:
        if pad:
            shape = list(t.shape)
            shape[dim] = pad
            t = torch.cat([t, t.new_zeros(shape)], dim=dim)
        return t.chunk(self.size, dim=dim)[self.rank]


# --------------------------------------------------------------------------------------- CFG parallel


def cfg_parallel_forward(model, group: dist.ProcessGroup, x: torch.Tensor, t: torch.Tensor,
                         context: torch.Tensor, **model_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free guidance on two ranks: ``context`` [2, L, C] holds the prompt (row 0) and the negative
    prompt (row 1); rank i of ``group`` evaluates row i and both get (v_cond, v_uncond)."""
    if dist.get_world_size(group) != 2 or context.shape[0] != 2:
        raise ValueError("CFG-parallel needs a cfg group of 2 ranks and context rows [prompt, negative prompt].")
    i = dist.get_rank(group)
    v = model(x, t, context[i : i + 1], **model_kwargs).contiguous()
    both = [torch.empty_like(v) for _ in range(2)]
    dist.all_gather(both, v, group=group)
    _sent("cfg", _nbytes(v))
    return both[0], both[1]


# ----------------------------------------------------------------------------------- analytic model


def latent_tokens(cfg: DiTConfig, frames: int, height: int, width: int, vae_stride: tuple[int, int, int] = (4, 8, 8)
                  ) -> int:
    """DiT tokens of a video of ``frames`` × ``height`` × ``width`` pixels (81 × 720 × 1280 -> 75,600)."""
    st, sh, sw = vae_stride
    pt, ph, pw = cfg.patch_size
    return (1 + (frames - 1) // st) // pt * (height // sh // ph) * (width // sw // pw)


def context_parallel_comm(cfg: DiTConfig, tokens: int, *, ulysses: int = 1, ring: int = 1, batch: int = 1,
                          dtype_bytes: int = 2, backward: bool = False) -> dict[str, int]:
    """Bytes one rank sends in one DiT forward (or, with ``backward``, its backward) under ulysses × ring
    context parallelism, by kind as ``count_sent_bytes`` reports them.

    Per layer, with s = ceil(tokens / n)·batch tokens per rank (n = ulysses·ring) and width = dim:
    Ulysses sends (u-1)/u of q, k, v and of the output: 4·s·width·(u-1)/u elements (the same again backward).
    Ring sends its K/V block [s·u tokens, width/u] ring-1 times: 2·s·width·(ring-1) (backward: K/V ring-1
    times plus their float32 gradient accumulators ring times). The head's float32 output (out_dim·prod(patch)
    channels) is all-gathered once (no backward traffic). Activation checkpointing repeats the forward's
    traffic in the backward (the recomputation), which is not included here.
    """
    n = ulysses * ring
    s = math.ceil(tokens / n) * batch
    width, layers = cfg.dim, cfg.num_layers
    a2a = 4 * s * (width // ulysses) * (ulysses - 1) * dtype_bytes * layers
    if backward:
        ring_bytes = 2 * s * width * ((ring - 1) * dtype_bytes + (ring * 4 if ring > 1 else 0)) * layers
        return {"all_to_all": a2a, "ring": ring_bytes, "gather": 0}
    ring_bytes = 2 * s * width * (ring - 1) * dtype_bytes * layers
    gather = s * cfg.out_dim * math.prod(cfg.patch_size) * 4 * (n - 1)
    return {"all_to_all": a2a, "ring": ring_bytes, "gather": gather}
