"""Training: one framework for the flow-matching DiT trainer (one process or torchrun: data parallel × FSDP2 × context
parallel) and the VAE trainer — one config system (:mod:`.config`), one checkpoint layout with exact resume
(:mod:`.checkpoint`; sharded checkpoints load at any world size), one optimizer and schedule (:mod:`.optim`), one
metrics logger (:mod:`.metrics`), a run lock per output folder (:mod:`.lock`) — plus release export, EMA and LoRA."""

from openwan.data.sources import BatchSource, ListBatches, SamplerLoader
from openwan.diffusion.objective import flow_matching_loss
from openwan.train.builders import data_from_config, training_mesh
from openwan.train.checkpoint import (
    checkpoint_weights,
    export_dit,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from openwan.train.config import (
    CheckpointConfig,
    DataConfig,
    EMAConfig,
    LogConfig,
    LoRAConfig,
    ModelConfig,
    NoiseMix,
    OptimConfig,
    ParallelConfig,
    SampleConfig,
    ScheduleConfig,
    StageConfig,
    TimestepConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from openwan.train.ema import EMA
from openwan.train.lock import RunLock
from openwan.train.lora import add_lora, fuse_lora, load_lora, lora_state_dict, parse_lora_spec, save_lora
from openwan.train.metrics import MetricsLogger, read_metrics
from openwan.train.optim import lr_at
from openwan.train.trainer import Trainer, train
from openwan.train.vae_config import VAETrainConfig, load_vae_config

__all__ = [
    "BatchSource",
    "CheckpointConfig",
    "DataConfig",
    "EMA",
    "EMAConfig",
    "ListBatches",
    "LogConfig",
    "LoRAConfig",
    "MetricsLogger",
    "ModelConfig",
    "NoiseMix",
    "OptimConfig",
    "ParallelConfig",
    "SampleConfig",
    "SamplerLoader",
    "ScheduleConfig",
    "StageConfig",
    "TimestepConfig",
    "TrainConfig",
    "RunLock",
    "Trainer",
    "VAETrainConfig",
    "add_lora",
    "apply_overrides",
    "checkpoint_weights",
    "data_from_config",
    "export_dit",
    "flow_matching_loss",
    "fuse_lora",
    "latest_checkpoint",
    "list_checkpoints",
    "load_config",
    "load_lora",
    "load_vae_config",
    "lora_state_dict",
    "lr_at",
    "parse_lora_spec",
    "read_metrics",
    "save_checkpoint",
    "save_lora",
    "train",
    "training_mesh",
]
