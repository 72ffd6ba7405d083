"""How models run: device placement, offloading and block streaming."""
