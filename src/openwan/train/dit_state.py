"""The DiT trainer's checkpoints: what a step folder holds and how a run resumes from it.

One process writes plain files (:func:`openwan.train.checkpoint.save_checkpoint`); many write ``sharded/`` with
``torch.distributed.checkpoint`` and rank 0 the plain files beside it. Either kind resumes at any world size: a
one-process checkpoint is read whole by every rank, which keeps its shards; a sharded one is resharded by DCP.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from openwan.train import checkpoint as ckpt
from openwan.train.ema import EMA
from openwan.train.lora import lora_state_dict
from openwan.train.optim import lr_at

log = logging.getLogger("openwan.train")

MODEL_FILE = ckpt.MODEL_FILE  # full fine-tune: the folder loads with WanDiT.from_pretrained
ADAPTER_FILE = "adapter.safetensors"  # LoRA: the trained adapter parameters, for resume
LORA_FILE = "lora.safetensors"  # LoRA: the export in diffusers' key names (WanPipeline.load_lora_weights)
LORA_OFFICIAL_FILE = "lora_official.safetensors"  # the same in official module names + alpha (ComfyUI)
LORA_EMA_FILE = "lora_ema.safetensors"
EMA_FILE = ckpt.EMA_FILE
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"


class DiTCheckpointing:
    """The checkpoint methods of :class:`~openwan.train.trainer.Trainer` (which holds the state they read)."""

    def checkpoint_files(self) -> dict[str, Any]:
        """Every file of a one-process checkpoint of the current state (name -> object; see
        :mod:`openwan.train.checkpoint`)."""
        files: dict[str, Any] = {}
        if self.cfg.lora is not None:
            files[ADAPTER_FILE] = {n: p.detach() for n, p in self.params.items()}
            files[LORA_FILE] = lora_state_dict(self.dit, "diffusers")
            files[LORA_OFFICIAL_FILE] = lora_state_dict(self.dit, "official")
            if self.ema is not None:
                with self.ema.swapped_in():
                    files[LORA_EMA_FILE] = lora_state_dict(self.dit, "diffusers")
        else:
            files[MODEL_FILE] = {k: v.detach() for k, v in self.dit.state_dict().items()}
            files[ckpt.CONFIG_FILE] = self.dit.cfg.to_dict()
        if self.ema is not None:
            files[EMA_FILE] = self.ema.state_dict()
        files[OPTIMIZER_FILE] = self.optimizer.state_dict()
        files.update(self._state_files())
        return files

    def _state_files(self) -> dict[str, Any]:
        """The RNG states and trainer_state.json: step (hence the LR), data position and draw counts."""
        rng_tensors, rng_plain = ckpt.capture_rng({})
        return {
            RNG_FILE: rng_tensors,
            ckpt.STATE_FILE: {
                "format": 2,
                "step": self.step,
                "lr": lr_at(self.cfg, max(self.step - 1, 0)),
                "data": self.data_state,
                "draws": dict(self.draws),
                "rng": rng_plain,
                "lora": self.cfg.lora is not None,
                "world_size": self.world_size,
                "config": self.cfg.to_dict(),
            },
        }

    def sharded_state(self) -> dict[str, Any]:
        """What a multi-process checkpoint saves with torch.distributed.checkpoint: model, optimizer, EMA (as
        ``torch.distributed.checkpoint.state_dict`` gives them: official parameter names, sharded under FSDP)."""
        state = {"model": get_model_state_dict(self.dit),
                 "optimizer": get_optimizer_state_dict(self.dit, self.optimizer)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _sharded_files(self) -> dict[str, Any] | None:
        """Rank 0's plain files next to a sharded checkpoint (None on other ranks). With checkpoint.consolidated
        the full weights and EMA are gathered into it: a collective, every rank takes part."""
        files: dict[str, Any] = {}
        if self.cfg.checkpoint.consolidated:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors on rank 0 only
            files[MODEL_FILE] = get_model_state_dict(self.dit, options=options)
            if self.ema is not None:
                files[EMA_FILE] = self.ema.full_state_dict(keep=self.is_main)
        if not self.is_main:
            return None
        files[ckpt.CONFIG_FILE] = self.dit.cfg.to_dict()
        files.update(self._state_files())
        return files

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (with a mesh: every rank must call this); returns its folder."""
        if self.mesh is None:
            folder = ckpt.save_checkpoint(self.out, self.step, self.checkpoint_files(), self.cfg.checkpoint.keep_last)
        else:
            folder = ckpt.save_sharded_checkpoint(self.out, self.step, self.sharded_state(), self._sharded_files(),
                                                  self.cfg.checkpoint.keep_last)
        self.last_checkpoint_step = self.step
        if self.is_main:
            self.metrics.plot()
            log.info("saved checkpoint %s", folder)
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore model (or adapter), EMA, optimizer, step (hence the LR), data position and every RNG — from a
        one-process or a sharded checkpoint, whatever the world size that wrote it."""
        folder = Path(folder)
        state = ckpt.read_state(folder)
        if bool(state.get("lora")) != (self.cfg.lora is not None):
            kind = "a LoRA" if state.get("lora") else "a full fine-tune"
            raise ValueError(f"{folder} is a checkpoint of {kind} run; set lora as that run did to resume it.")
        if (folder / ckpt.SHARDED_DIR).is_dir():
            self._load_sharded(folder)
        elif self.mesh is None:
            self._load_files(folder)
        else:
            self._load_files_into_shards(folder)
        self.step = int(state["step"])
        self.data_state = self._resume_data = state.get("data")
        self.draws = dict(state.get("draws") or {"noise": self.step, "dropout": self.step})  # format 1: per step
        ckpt.restore_rng(ckpt.read_file(folder / RNG_FILE), state["rng"], {})
        self.last_checkpoint_step = self.step
        self.metrics.truncate_after(self.step)

    def _load_files(self, folder: Path) -> None:
        if self.cfg.lora is not None:
            self._load_params(ckpt.read_file(folder / ADAPTER_FILE), folder / ADAPTER_FILE)
        else:
            self._load_params(ckpt.read_file(folder / MODEL_FILE), folder / MODEL_FILE)
        self._load_ema(folder)
        self.optimizer.load_state_dict(ckpt.read_file(folder / OPTIMIZER_FILE))

    def _load_ema(self, folder: Path) -> None:
        if self.ema is None:
            return
        if (folder / EMA_FILE).is_file():
            self.ema.load_state_dict(ckpt.read_file(folder / EMA_FILE))
        else:
            log.warning("%s has no EMA; the EMA starts from the loaded weights", folder)
            self.ema = EMA(self.params, self.cfg.ema.decay)

    def _load_files_into_shards(self, folder: Path) -> None:
        """A one-process checkpoint into a model on a mesh: every rank reads the whole files and keeps its shards."""
        whole = StateDictOptions(full_state_dict=True)
        weights = ckpt.read_file(folder / MODEL_FILE)
        self._check_keys(set(weights), folder / MODEL_FILE)
        set_model_state_dict(self.dit, weights, options=whole)
        self._load_ema(folder)
        optim = _named_optimizer_state(ckpt.read_file(folder / OPTIMIZER_FILE), self.optimizer, self.params)
        set_optimizer_state_dict(self.dit, self.optimizer, optim, options=whole)

    def _load_sharded(self, folder: Path) -> None:
        """A sharded checkpoint at any world size: torch.distributed.checkpoint reshards it onto this mesh (or
        reads it whole into one process, with no process group)."""
        path = folder / ckpt.SHARDED_DIR
        saved = ckpt.sharded_metadata(path)
        self._check_keys({k.removeprefix("model.") for k in saved if k.startswith("model.")}, path)
        state = self.sharded_state()
        has_ema = any(k.startswith("ema.") for k in saved)
        if not has_ema:
            state.pop("ema", None)
        ckpt.load_sharded(state, path, single_process=self.mesh is None)
        set_model_state_dict(self.dit, state["model"])
        set_optimizer_state_dict(self.dit, self.optimizer, state["optimizer"])
        if self.ema is not None and has_ema:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.warning("%s has no EMA; the EMA starts from the loaded weights", folder)
            self.ema = EMA(self.params, self.cfg.ema.decay)

    @torch.no_grad()
    def _load_params(self, tensors: Mapping[str, torch.Tensor], source: Path) -> None:
        named = dict(self.dit.named_parameters())
        wanted = set(self.params) if self.cfg.lora is not None else set(named)
        missing, unexpected = wanted - set(tensors), set(tensors) - set(named)
        if missing or unexpected:
            raise ValueError(f"{source} does not match the model being trained ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors); resume with the config of the run that wrote it.")
        for name, value in tensors.items():
            named[name].copy_(value)

    def _check_keys(self, saved: set[str], source: Path) -> None:
        named = set(self.dit.state_dict())
        missing, unexpected = named - saved, saved - named
        if missing or unexpected:
            raise ValueError(f"{source} does not match the model being trained ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors); resume with the config of the run that wrote it.")


def _named_optimizer_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                           params: Mapping[str, nn.Parameter]) -> dict[str, Any]:
    """A one-process ``optimizer.state_dict()`` (parameters numbered in group order) keyed by parameter names, as
    ``set_optimizer_state_dict`` takes it."""
    names = {id(p): n for n, p in params.items()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(order):
        raise ValueError(f"the checkpoint's optimizer holds {len(saved)} parameters, this model trains {len(order)}; "
                         "resume with the config of the run that wrote it.")
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }


__all__ = ["DiTCheckpointing"]
