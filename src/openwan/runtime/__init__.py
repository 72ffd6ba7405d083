"""How models run: device placement, offloading and block streaming, LoRA, 8-bit weights, compile, attention
backends (in models/layers.py), the accelerations applied together (accel.py) and diffusion caches (cache/)."""
