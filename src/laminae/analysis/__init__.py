"""Analysis stages: turn stored activations into metric tables (`qkv`: experiment 1)."""
