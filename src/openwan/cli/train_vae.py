"""``openwan train-vae --stage 1|2|3``: train the Wan2.1 VAE in the paper's three stages from a clip manifest."""

from __future__ import annotations

import argparse

HELP = "train the Wan2.1 VAE: 2D image VAE (stage 1), inflated 3D causal VAE (2), GAN fine-tune (3)"
EPILOG = """examples:
  openwan train-vae --stage 1 --manifest clips.jsonl --out runs/vae1 --size 256 --steps 20000
  openwan train-vae --stage 2 --manifest clips.jsonl --out runs/vae2 --init runs/vae1/image_vae.pth
  openwan train-vae --stage 3 --manifest clips.jsonl --out runs/vae3 --init runs/vae2/Wan2.1_VAE.pth --gan-start 2000
  openwan train-vae --stage 2 --manifest clips.jsonl --out runs/vae-dec --init runs/vae2/Wan2.1_VAE.pth --freeze-encoder

Stage 1 writes image_vae.pth (+ .json); stages 2 and 3 write Wan2.1_VAE.pth in the official layout and
Wan2.1_VAE.json beside it with the latent mean/std measured on the data (--freeze-encoder keeps the --init
VAE's: its latents do not change, so a DiT trained on them still fits the new decoder). --resume continues
the run in --out from its newest checkpoint. No perceptual network is downloaded: pass local VGG16/AlexNet weights with
--perceptual (torchvision or lpips files, optionally the LPIPS heads), else training says so and runs without."""


def add_parser(sub) -> None:
    p = sub.add_parser("train-vae", help=HELP, description=HELP + ".", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, required=True, choices=[1, 2, 3])
    p.add_argument("--manifest", required=True, help="clips and images (.jsonl or .parquet manifest)")
    p.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl and the trained VAE")
    p.add_argument("--init", default=None,
                   help="stage 2: the stage-1 image_vae.pth; stage 3: the stage-2 Wan2.1_VAE.pth; stage 1: continue "
                        "from an image_vae.pth")
    p.add_argument("--preset", default="wan2.1", help="VAE architecture of a fresh stage 1: wan2.1 or tiny")
    p.add_argument("--size", type=int, default=None, help="square crop side in pixels (default 256; stages 2-3: 128)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip, 4n+1 (default 1; stages 2-3: 5)")
    p.add_argument("--fps", type=float, default=16.0, help="frame rate clips are sampled at")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--min-lr-ratio", type=float, default=1.0,
                   help="cosine-decay the lr after warm-up to lr × this at the last step (default 1: constant)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--l1-weight", type=float, default=3.0)
    p.add_argument("--l2-weight", type=float, default=0.0, help="mean squared error weight (default 0: L1 only)")
    p.add_argument("--kl-weight", type=float, default=3e-6)
    p.add_argument("--colour-weight", type=float, default=0.0,
                   help="latent colour probe weight: the posterior mean must carry each latent cell's mean colour "
                        "linearly (keeps the colour of flat areas; the demo recipe uses 10)")
    p.add_argument("--perceptual", nargs="*", default=[], metavar="FILE",
                   help="local perceptual network weights (VGG16/AlexNet backbone, optionally LPIPS heads)")
    p.add_argument("--gan-start", type=int, default=0, help="stage 3: step from which the GAN loss applies")
    p.add_argument("--gan-weight", type=float, default=0.5)
    p.add_argument("--no-adaptive-gan", action="store_true", help="stage 3: use --gan-weight as a fixed weight")
    p.add_argument("--disc-dim", type=int, default=64, help="stage 3: discriminator base width")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--freeze-encoder", action="store_true",
                   help="stages 2-3: train only the decoder of the --init VAE; its latents stay the same, so a DiT "
                        "trained on them keeps working with the new decoder")
    p.add_argument("--decoder-dim", type=int, default=None, metavar="N",
                   help="decoder base width: a fresh stage 1 builds its decoder N wide; an --init VAE with a narrower "
                        "decoder is widened to N, coding as before (with --freeze-encoder: a sharper decoder for the "
                        "same latents)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.set_defaults(run=run)


def build_data(args: argparse.Namespace, frames: int, size: int):
    """A resumable loader of {"video": [B, 3, frames, size, size]} batches over the manifest's usable clips."""
    import logging

    from openwan.data.buckets import Bucket, BucketBatchSampler, assign_buckets
    from openwan.data.dataset import VideoClipDataset, collate, scan_manifest
    from openwan.data.manifest import read_manifest
    from openwan.train.trainer import SamplerLoader

    records, bad = scan_manifest(read_manifest(args.manifest))
    bucket = Bucket(frames, size, size)
    assignments = assign_buckets(records, [bucket], fps=args.fps)
    usable = sum(b is not None for b in assignments)
    short = len(records) - usable
    logging.getLogger("openwan.train").info(
        "%d clips usable at %dx%dx%d; %d unreadable, %d too short", usable, frames, size, size, len(bad), short)
    if usable < args.batch_size:
        raise ValueError(f"only {usable} clips of {args.manifest} give {frames} frames at {args.fps} fps; add "
                         "clips, lower --frames or --batch-size.")
    dataset = VideoClipDataset(records, assignments, fps=args.fps)
    sampler = BucketBatchSampler(assignments, args.batch_size, seed=args.seed)
    return SamplerLoader(dataset, sampler, collate, num_workers=args.workers, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from openwan.configs import get_preset
    from openwan.train.vae_trainer import VAETrainConfig, run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Subnormal floats appear while a fresh VAE reorganises; on x86 CPUs each costs a slow path (the demo recipe's
    # stage 1 spent ~5 min in 50 steps of up to 16 s instead of 0.6 s). Values below 1.2e-38 become 0.
    torch.set_flush_denormal(True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("bf16" if device.startswith("cuda") else "fp32")
    video_stage = args.stage > 1
    size = args.size or (128 if video_stage else 256)
    frames = args.frames or (5 if video_stage else 1)
    cfg = VAETrainConfig(
        stage=args.stage, steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip,
        l1_weight=args.l1_weight, l2_weight=args.l2_weight, kl_weight=args.kl_weight,
        colour_weight=args.colour_weight,
        perceptual_weights=tuple(args.perceptual), gan_start=args.gan_start,
        gan_weight=args.gan_weight, gan_adaptive=not args.no_adaptive_gan, disc_dim=args.disc_dim, seed=args.seed,
        device=device, precision=precision, log_every=args.log_every, save_every=args.save_every,
        keep_last=args.keep_last, freeze_encoder=args.freeze_encoder,
    )
    torch.manual_seed(args.seed)
    data = build_data(args, frames, size)
    path = run_stage(cfg, data, args.out, init=args.init, vae_config=get_preset("vae", args.preset),
                     resume=args.resume, decoder_dim=args.decoder_dim)
    sidecar = path.with_suffix(".json").name
    what = ("config" if args.stage == 1 else "config and the --init VAE's latent mean/std" if args.freeze_encoder
            else "config and measured latent mean/std")
    print(f"stage {args.stage} done: {path} ({what} in {sidecar}); checkpoints and metrics.jsonl are in {args.out}")
    return 0
