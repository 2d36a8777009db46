"""The model families. Each module holds one family, top to bottom, and exposes:

Config                                  a dataclass of the family's options
build(cfg, img_shape, num_classes)      -> {"G": ..., "D": ...} networks
noise(cfg, n, generator, device)        -> latents for n samples
generate(nets, z)                       -> images in [-1, 1]
step(...)                               one training step (see gankit.game)
"""

from gankit.models import mlp

MODELS = {
    "mlp": mlp,
}
