"""Our official ⇄ diffusers key maps agree with diffusers' own converters and are exact inverses."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from conftest import official_keys
from openwan.checkpoints import keymaps
from openwan.configs import DIT_PRESETS, VAE_PRESETS

SECTIONS = {
    "t2v-1.3B": "WanModel t2v-1.3B",
    "t2v-14B": "WanModel t2v-14B",
    "i2v-14B-480p": "WanModel i2v-14B",
    "flf2v-14B": "WanModel flf2v-14B",
    "ti2v-5B": "WanModel ti2v-5B",
    "i2v-A14B-high": "i2v-A14B(expert)",
}


def _fake(keys) -> dict[str, torch.Tensor]:
    # Distinct values so a swapped key would be caught, not only a misnamed one.
    return {k: torch.tensor([float(i)]) for i, k in enumerate(sorted(keys))}


@pytest.mark.parametrize("preset", list(SECTIONS))
def test_dit_map_matches_diffusers_converter(preset):
    cfg = DIT_PRESETS[preset]
    state = _fake(official_keys(SECTIONS[preset], cfg.num_layers))
    ours = keymaps.dit_official_to_diffusers(state)
    theirs = convert_wan_transformer_to_diffusers(dict(state))
    # diffusers' converter leaves flf2v's learned image position embedding under its official name, while its
    # model calls it condition_embedder.image_embedder.pos_embed; ours maps it to the model's name.
    if "img_emb.emb_pos" in theirs:
        theirs["condition_embedder.image_embedder.pos_embed"] = theirs.pop("img_emb.emb_pos")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = keymaps.dit_diffusers_to_official(ours)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


@pytest.mark.parametrize("preset", ["t2v-1.3B", "flf2v-14B", "ti2v-5B"])
def test_dit_map_names_every_diffusers_parameter(preset):
    from diffusers import WanTransformer3DModel

    cfg = DIT_PRESETS[preset].replace(num_layers=1)
    with torch.device("meta"):
        model = WanTransformer3DModel(**{k: v for k, v in keymaps.dit_config_to_diffusers(cfg).items()
                                         if not k.startswith("_")})
    state = _fake(official_keys(SECTIONS[preset], 1))
    assert set(keymaps.dit_official_to_diffusers(state)) == set(model.state_dict())


def test_dit_config_round_trip_through_diffusers():
    for name, cfg in DIT_PRESETS.items():
        back = keymaps.dit_config_from_diffusers(keymaps.dit_config_to_diffusers(cfg))
        assert back == cfg.replace(text_len=back.text_len), name


def test_vae_map_matches_diffusers_converter():
    state = _fake(official_keys("Wan2.1 VAE"))
    ours = keymaps.vae_official_to_diffusers(state, VAE_PRESETS["wan2.1"])
    theirs = convert_wan_vae_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = keymaps.vae_diffusers_to_official(ours, VAE_PRESETS["wan2.1"])
    assert back.keys() == state.keys()


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="not a Wan2.1/2.2 transformer"):
        keymaps.dit_official_to_diffusers({"model.unet.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a Wan2.1 VAE"):
        keymaps.vae_official_to_diffusers({"encoder.foo": torch.zeros(1)}, VAE_PRESETS["wan2.1"])
