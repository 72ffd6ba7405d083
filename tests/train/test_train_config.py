"""Training configs: YAML and TOML files, CLI-style overrides, and errors that name the field and what it allows."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

import pytest

from openwan.cli import train as train_cmd
from openwan.train import LoRAConfig, StageConfig, TrainConfig, load_config

YAML = textwrap.dedent("""
    model: {preset: tiny}
    stages:
      - {name: images-256, steps: 100, batch_size: 8, buckets: [[1, 256, 256]]}
      - name: joint-192
        steps: 200
        lr: 5e-5
        image_video_ratio: 0.25
        buckets: [[1, 192, 320], [81, 192, 320]]
    optim: {lr: 1e-4, betas: [0.9, 0.95]}
    timesteps: {mode: logit_normal, shift: resolution}
    lora: {rank: 8, alpha: 8}
""")

TOML = textwrap.dedent("""
    [model]
    preset = "tiny"

    [[stages]]
    name = "images-256"
    steps = 100
    batch_size = 8
    buckets = [[1, 256, 256]]

    [[stages]]
    name = "joint-192"
    steps = 200
    lr = 5e-5
    image_video_ratio = 0.25
    buckets = [[1, 192, 320], [81, 192, 320]]

    [optim]
    lr = 1e-4
    betas = [0.9, 0.95]

    [timesteps]
    mode = "logit_normal"
    shift = "resolution"

    [lora]
    rank = 8
    alpha = 8
""")


def test_yaml_and_toml_give_the_same_typed_config(tmp_path):
    (tmp_path / "a.yaml").write_text(YAML)
    (tmp_path / "a.toml").write_text(TOML)
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b
    assert a.stages[1] == StageConfig(name="joint-192", steps=200, lr=5e-5, image_video_ratio=0.25,
                                      buckets=((1, 192, 320), (81, 192, 320)))
    assert a.optim.lr == 1e-4 and isinstance(a.optim.lr, float)  # YAML reads "1e-4" as a string: coerced
    assert a.optim.betas == (0.9, 0.95) and a.lora == LoRAConfig(rank=8, alpha=8.0)
    assert a.total_steps == 300 and a.stage_lr(a.stages[0]) == 1e-4 and a.stage_lr(a.stages[1]) == 5e-5
    assert a.text_dropout == 0.1  # the default
    assert TrainConfig.from_dict(a.to_dict()) == a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.seed = 3


def test_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text(YAML)
    cfg = load_config(tmp_path / "a.yaml", ["optim.lr=3e-4", "stages.0.steps=10", "stages.2.steps=5",
                                           "stages.2.buckets=[[17, 480, 832]]", "lora=null", "ema.decay=0",
                                           "sample.prompts=[a cat, a dog]", "seed=12"])
    assert cfg.optim.lr == 3e-4 and cfg.stages[0].steps == 10 and cfg.seed == 12
    assert len(cfg.stages) == 3 and cfg.stages[2].steps == 5 and cfg.stages[2].buckets == ((17, 480, 832),)
    assert cfg.lora is None and cfg.ema.decay == 0.0 and cfg.sample.prompts == ("a cat", "a dog")
    # A section that is null is switched on with its defaults by setting one of its fields.
    cfg = load_config(None, ["lora.rank=4"])
    assert cfg.lora == LoRAConfig(rank=4)


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "unknown config field 'optim.lrr'; optim has: lr, betas"),
    (["colour=red"], "unknown config field 'colour'"),
    (["timesteps.mode=cosine"], "timesteps.mode must be one of: uniform, logit_normal; got 'cosine'"),
    (["timesteps.shift=big"], "timesteps.shift must be a number or one of: resolution"),
    (["schedule.kind=linear"], "schedule.kind must be one of: cosine, constant"),
    (["optim.lr=fast"], "optim.lr must be a number; got 'fast'"),
    (["optim.lr=-1"], "optim.lr must be a positive number"),
    (["optim.betas=[0.9]"], "optim.betas must be a list of 2 values"),
    (["stages.0.steps=0"], "stages.0.steps must be an integer >= 1"),
    (["stages.0.steps=2.5"], "stages.0.steps must be an integer"),
    (["stages.0.buckets=[[4, 256, 256]]"], "stages.0.buckets.0.0 must be a frame count 4n+1"),
    (["stages.0.buckets=[[1, 250, 256]]"], "stages.0.buckets.0.1 must be a pixel size that is a multiple of 16"),
    (["stages.3.steps=1"], "not an index of a list of 1"),
    (["stages=[]"], "stages must be a list of at least one stage"),
    (["text_dropout=1.5"], "text_dropout must be a probability in [0, 1]"),
    (["ema.decay=1"], "ema.decay must be in [0, 1)"),
    (["activation_checkpointing=maybe"], "activation_checkpointing must be true or false"),
    (["parallel.cp_ulysses=0"], "parallel.cp_ulysses must be an integer >= 1"),
    (["parallel.dp=some"], "parallel.dp must be an integer or one of: auto"),
    (["lora.targets=[attn]"], "lora.targets must be a non-empty list of: self_attn.q"),
    (["model.preset=huge"], "model.preset must be one of: t2v-1.3B"),
    (["precision=fp8"], "precision must be one of: auto, fp32, bf16"),
    (["sample.every=10"], "sample.prompts must be a non-empty list of prompts"),
    (["optim.lr"], "is not of the form field.path=value"),
])
def test_bad_values_name_the_field_and_what_is_allowed(override, message):
    with pytest.raises(ValueError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ValueError, match="use .yaml, .yml or .toml"):
        load_config(tmp_path / "a.json")
    (tmp_path / "b.yaml").write_text("stages: [1, 2")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("stages: [{steps: 3, colour: red}]")
    with pytest.raises(ValueError, match="unknown config field 'stages.0.colour'"):
        load_config(tmp_path / "d.yaml")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="openwan")
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *argv])
    return args.run(args)


def test_cli_prints_resolved_config_and_reports_errors(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(YAML)
    assert _cli(["--config", str(tmp_path / "a.yaml"), "stages.0.steps=7", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 7" in printed and "preset: tiny" in printed
    with pytest.raises(ValueError, match="optim.lr must be a number"):
        _cli(["--config", str(tmp_path / "a.yaml"), "optim.lr=abc"])


def test_the_curriculum_example_in_the_docs_is_a_valid_config(tmp_path):
    import openwan.train.config as config_module

    doc = config_module.__doc__
    example = doc[doc.index("::\n") + 3:]
    path = tmp_path / "curriculum.yaml"
    path.write_text(textwrap.dedent(example))
    cfg = load_config(path)
    assert [s.name for s in cfg.stages] == ["image-256", "joint-192", "joint-480"]
    assert cfg.stages[2].cache_dir == "cache/480p" and cfg.timesteps.shift == "resolution"
