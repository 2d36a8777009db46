"""The model families. Each module holds one family, top to bottom, and exposes:

Config                                  a dataclass of the family's options
build(cfg, img_shape, num_classes)      -> {"G": ..., "D": ...} networks
noise(cfg, n, generator, device)        -> latents for n samples
generate(nets, z, labels=None)          -> images in [-1, 1]
step(...)                               one training step (see gankit.game)

A conditional model (its Config's `cond` is not "none") takes labels in
`generate`; `is_conditional` says which. Optional hooks a family may define:

check(model_cfg, train_cfg)             refuse options that do not apply to it
batchnorm_d(model_cfg)                  how to rid D of BatchNorm when it has it, else None
                                        (the penalties are refused with that hint)
content_network(cfg, data, device, log) a frozen network its loss needs (SRGAN)
initialize(cfg, nets, log)              start from another run's weights (SRGAN)
fixed_inputs(cfg, data, n, device)      what the progress grids feed G, instead of noise
upscale / log_likelihood / pyramid_samples: what `gankit upscale`, the VAE's
likelihood in `gankit eval` and `gankit sample --pyramid` use
input_shapes(cfg, img_shape)            {name: shape} of what `generate` takes, side by side
                                        along dim 1 (default: {"z": (batch, nz)}); names
                                        the inputs of `gankit export` and `sample --latents`

`generate` uses only the networks named G or G<k> (G0, G1, ...): `gankit export`
packs those, each with its moving average (G_ema, G0_ema, ...) in its place when the run
keeps one.
"""

from gankit.models import dcgan, lapgan, mlp, r3gan, srgan, vae

MODELS = {
    "mlp": mlp,
    "dcgan": dcgan,
    "r3gan": r3gan,
    "lapgan": lapgan,
    "srgan": srgan,
    "vae": vae,
}


def is_conditional(model_cfg) -> bool:
    return getattr(model_cfg, "cond", "none") != "none"


def is_adversarial(family) -> bool:
    """Trained by the D/G game (every GAN), or by its own objective (the VAE)."""
    return getattr(family, "ADVERSARIAL", True)
