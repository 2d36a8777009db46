"""SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a Generative
Adversarial Network") and its generator trained alone, SRResNet.

    G (SRResNet): LR (B, 3, h, w) -> SR (B, 3, s*h, s*w)
        Conv9 -> PReLU -> [Conv3 -> BN -> PReLU -> Conv3 -> BN, + skip] x n_blocks
        -> Conv3 -> BN, + skip -> [Conv3 -> PixelShuffle(2) -> PReLU] x log2(s) -> Conv9 -> Tanh
      With `bicubic_skip` (the default) the last Conv9 starts at zero and its output is added
      to the bicubic upscale of LR instead of passing a Tanh: G starts at bicubic quality and
      learns only what bicubic misses (global residual learning, Kim et al. 2016), which a
      short CPU training needs; `bicubic_skip: false` is the paper's G. `norm: none` drops
      the BatchNorms, as EDSR (Lim et al. 2017) does for better PSNR.
    D: HR or SR patch -> Conv3 -> LeakyReLU -> [Conv3 -> BN -> LeakyReLU] x 7 (strides 2, 1, 2,
       1, 2, 1, 2; widths ndf, 2ndf, 2ndf, 4ndf, 4ndf, 8ndf, 8ndf) -> Dense(1024) -> LeakyReLU
       -> Dense(1): a logit

The low-resolution input is the high-resolution patch downscaled by bicubic
interpolation (antialiased), made inside the step, so the dataset is HR patches only.

    stage 1, SRResNet:  minimise MSE(G(LR), HR) (pixel loss; `pixel_loss: l1` for L1)
    stage 2, SRGAN:     D learns HR vs G(LR) (the GAN loss, `train.loss`);
                        G minimises content(G(LR), HR) + adv_weight * loss.g(D(G(LR)))

The content loss compares feature maps of a frozen network: VGG19's relu5_4 (the
paper's VGG54) when the user points `vgg19_weights` at a local torchvision VGG19
weights file, otherwise a small CNN that gankit trains itself on the training
patches to tell their rotation (0, 90, 180 or 270 degrees), cached by data content;
the log says which. `content: pixel` uses plain MSE instead. Stage 2 starts from
an SRResNet run (`init`) or pretrains G on the pixel loss for `pretrain_steps`
steps first, inside the same run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.errors import GankitError
from gankit.losses import GAN_LOSSES, d_prob

STAGES = ("srresnet", "srgan")
CONTENTS = ("features", "pixel")
NORMS = ("batch", "none")
PIXEL_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


@dataclass
class Config:
    family: str = "srgan"
    scale: int = 4  # upscaling factor: 2 or 4
    stage: str = "srgan"  # srresnet: pixel MSE only | srgan: adversarial + content loss
    n_blocks: int = 8  # G's residual blocks (the paper: 16)
    nf: int = 32  # G's channels (the paper: 64)
    ndf: int = 32  # D's first width, doubled every other layer (the paper: 64)
    content: str = "features"  # srgan's content loss: features (of a frozen network) | pixel
    vgg19_weights: str = ""  # local torchvision VGG19 weights for the VGG54 loss; "" = gankit's own
    adv_weight: float = 1e-3  # weight of the adversarial term in G's loss (the paper: 1e-3)
    pretrain_steps: int = 0  # srgan from scratch: G's first updates on the pixel loss alone
    init: str = ""  # srgan: start G from this SRResNet run (folder or checkpoint); "" = scratch
    bicubic_skip: bool = True  # G adds its output to the bicubic upscale; false = the paper's G
    norm: str = "batch"  # G's normalisation: batch (the paper) | none (EDSR: no BatchNorm)
    pixel_loss: str = "mse"  # stage 1's loss (and pixel content): mse (the paper) | l1 (EDSR)
    dihedral: bool = False  # each batch in a random one of the square's 8 flips/rotations (EDSR)

    def __post_init__(self):
        if self.scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {self.scale}")
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}: choose one of {', '.join(STAGES)}")
        if self.content not in CONTENTS:
            raise ValueError(
                f"unknown content {self.content!r}: choose one of {', '.join(CONTENTS)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(
                f"unknown pixel_loss {self.pixel_loss!r}: choose one of {', '.join(PIXEL_LOSSES)}"
            )
        if min(self.n_blocks, self.nf, self.ndf) < 1 or self.pretrain_steps < 0:
            raise ValueError("n_blocks, nf and ndf must be >= 1 and pretrain_steps >= 0")
        if self.adv_weight <= 0:
            raise ValueError(f"adv_weight must be > 0, got {self.adv_weight}")


def batchnorm_d(cfg: Config) -> str | None:
    """SRGAN's D always batch-normalises (the paper's): the penalties are refused."""
    return "the srgan family's D always has it, so drop --r1 and --r2 and use a loss other than wgan-gp"


def check(cfg: Config, train_cfg) -> None:
    loss = GAN_LOSSES[train_cfg.loss]
    if train_cfg.eval_every:
        raise GankitError("eval_every scores samples of noise; score SR runs with gankit eval RUN")
    if train_cfg.ema:
        raise GankitError("train.ema (or ema_kimg) is not supported by the srgan family")
    if train_cfg.augment or train_cfg.instance_noise:  # its step shows D the patches as they are
        raise GankitError(
            "srgan's D sees the HR patches as they are: drop augment and instance_noise"
        )
    if loss.relativistic:
        raise GankitError(
            f"srgan's adversarial term takes a loss of D(G(LR)) alone, not {train_cfg.loss}"
        )
    if cfg.stage == "srresnet" and (cfg.init or cfg.pretrain_steps):
        raise GankitError("init and pretrain_steps belong to stage srgan")
    if cfg.stage == "srresnet" and cfg.vgg19_weights:
        raise GankitError("vgg19_weights is for stage srgan's content loss")


# ---- resampling -----------------------------------------------------------------------------


def downscale(hr: Tensor, scale: int) -> Tensor:
    """HR (B, C, H, W) in [-1, 1] -> LR (B, C, H/s, W/s): bicubic with antialiasing."""
    return F.interpolate(
        hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False
    ).clamp(-1, 1)


def bicubic(lr: Tensor, scale: int) -> Tensor:
    """The baseline: LR upscaled by bicubic interpolation."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


# ---- G: SRResNet --------------------------------------------------------------------------------


def norm_layer(norm: str, nf: int) -> nn.Module:
    return nn.BatchNorm2d(nf) if norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    def __init__(self, nf: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, 1, 1),
            norm_layer(norm, nf),
            nn.PReLU(nf),
            nn.Conv2d(nf, nf, 3, 1, 1),
            norm_layer(norm, nf),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    def __init__(self, cfg: Config, channels: int = 3):
        super().__init__()
        # Read by the step. A G that starts from an SRResNet run (init) is pretrained already.
        self.scale, self.adv_weight = cfg.scale, cfg.adv_weight
        self.pixel_loss = PIXEL_LOSSES[cfg.pixel_loss]
        self.dihedral = cfg.dihedral
        self.pretrain_steps = 0 if cfg.init else cfg.pretrain_steps
        nf = cfg.nf
        self.head = nn.Sequential(nn.Conv2d(channels, nf, 9, 1, 4), nn.PReLU(nf))
        self.blocks = nn.Sequential(
            *(ResidualBlock(nf, cfg.norm) for _ in range(cfg.n_blocks)),
            nn.Conv2d(nf, nf, 3, 1, 1),
            norm_layer(cfg.norm, nf),
        )
        ups = []
        for _ in range(int(math.log2(cfg.scale))):  # sub-pixel conv: (4nf, h, w) -> (nf, 2h, 2w)
            ups += [nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2), nn.PReLU(nf)]
        self.tail = nn.Sequential(*ups, nn.Conv2d(nf, channels, 9, 1, 4))
        self.bicubic_skip = cfg.bicubic_skip
        if cfg.bicubic_skip:  # start from the bicubic image: the last layer's output is a residual
            nn.init.zeros_(self.tail[-1].weight)
            nn.init.zeros_(self.tail[-1].bias)

    def forward(self, lr: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.head(lr)  # (B, nf, h, w)
        out = self.tail(h + self.blocks(h))  # (B, C, s*h, s*w)
        if self.bicubic_skip:  # global residual learning (Kim et al. 2016)
            return (bicubic(lr, self.scale) + out).clamp(-1, 1)
        return torch.tanh(out)  # the paper's output layer


# ---- D -----------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    def __init__(self, ndf: int, img_shape: tuple[int, int, int]):
        super().__init__()
        size = img_shape[1]
        if size % 16:
            raise GankitError(f"SRGAN's D needs HR patches of a multiple of 16 pixels, got {size}")
        layers = [nn.Conv2d(img_shape[0], ndf, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        c = ndf
        for width, stride in [(1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2)]:
            layers += [nn.Conv2d(c, ndf * width, 3, stride, 1, bias=False)]
            layers += [nn.BatchNorm2d(ndf * width), nn.LeakyReLU(0.2, True)]
            c = ndf * width
        self.net = nn.Sequential(*layers, nn.Flatten())  # (B, 8 ndf * (size / 16)^2)
        self.head = nn.Sequential(
            nn.Linear(c * (size // 16) ** 2, 1024), nn.LeakyReLU(0.2, True), nn.Linear(1024, 1)
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.head(self.net(x)).squeeze(1)  # (B,) logits


# ---- the content network ------------------------------------------------------------------------


class RotationNet(nn.Module):
    """gankit's own feature network: a small CNN trained to tell a patch's rotation.

    Telling 0/90/180/270 degrees apart needs edges, textures and object shapes, so its
    feature maps serve as a content representation when no VGG19 weights are at hand.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(width, width, 3, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(width, 2 * width, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1),
            nn.ReLU(True),
        )  # (B, 2 width, H/4, W/4): the content features
        self.classify = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def _rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image in its four rotations, with labels 0..3: (4B, C, H, W), (4B,)."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    return rotated, torch.arange(4).repeat_interleave(x.shape[0])


def train_rotation_net(patches: Tensor, steps: int = 400, seed: int = 0, log=print) -> RotationNet:
    """Train RotationNet on HR patches (N, 3, H, W) in [-1, 1], deterministically."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = RotationNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(len(patches), (32,), generator=gen)
        x, y = _rotations(patches[idx, :, :32, :32])  # 32 x 32 corners: enough, and fast
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _rotations(patches[-256:, :, :32, :32])
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    log(f"content features: gankit's RotationNet, rotation accuracy {acc:.3f} on 1,024 crops")
    return net.eval().requires_grad_(False)


class VGG54(nn.Module):
    """VGG19 up to relu5_4 (the paper's VGG54), from a local torchvision weights file."""

    def __init__(self, path: str):
        super().__init__()
        from torchvision.models import vgg19

        from gankit.metrics.inception import load_weights

        vgg = vgg19(weights=None)  # never downloads: the weights come from `path`
        try:
            vgg.load_state_dict(load_weights(Path(path).expanduser(), "VGG19 weights"))
        except RuntimeError as e:
            raise GankitError(f"{path} is not a torchvision VGG19 state dict ({e})") from None
        self.features = vgg.features[:36].eval().requires_grad_(False)  # through relu5_4
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(((x + 1) / 2 - self.mean) / self.std)


def content_network(cfg: Config, data, device, log=print) -> nn.Module | None:
    """The frozen feature network of the content loss, or None for the pixel loss."""
    if cfg.stage != "srgan" or cfg.content == "pixel":
        return None
    if cfg.vgg19_weights:
        log(f"content features: VGG19 relu5_4 from {cfg.vgg19_weights}")
        return VGG54(cfg.vgg19_weights).to(device)
    from safetensors.torch import load_file, save_file

    from gankit.data import cache_dir, fingerprint

    path = cache_dir() / "classifiers" / f"rotationnet-{fingerprint(data)}.safetensors"
    if path.is_file():
        net = RotationNet()
        net.load_state_dict(load_file(path))
        log(f"content features: gankit's RotationNet (cached, {path.name})")
        net.eval().requires_grad_(False)
    else:
        log("no VGG19 weights given: training gankit's RotationNet for the content loss")
        net = train_rotation_net(data.images.cpu(), log=log)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(net.state_dict(), path)
    return net.features.to(device)


# ---- build / hooks / step --------------------------------------------------------------------


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """G (SRResNet) and, for stage srgan, D. img_shape is the HR patch shape."""
    if len(img_shape) != 3 or img_shape[1] % cfg.scale:
        raise GankitError(f"HR patches must be (C, H, W) with H divisible by {cfg.scale}")
    nets = {"G": Generator(cfg, img_shape[0])}
    if cfg.stage == "srgan":
        nets["D"] = Discriminator(cfg.ndf, img_shape)
    return nets


def initialize(cfg: Config, nets: dict[str, nn.Module], log=print) -> None:
    """Stage 2 from an SRResNet run: copy its G."""
    if not cfg.init:
        return
    from gankit import checkpoint as ckpt
    from gankit.checkpoint import find_checkpoint

    path = find_checkpoint(cfg.init)
    ckpt.load_checkpoint(path, {"G": nets["G"]})
    log(f"G starts from the SRResNet in {path}")


def fixed_inputs(cfg: Config, data, n: int, device) -> Tensor:
    """The LR versions of the first n HR patches: grids show what G makes of them."""
    return downscale(data.images[:n].to(device), cfg.scale)


def noise(cfg: Config, n: int, generator: torch.Generator, device="cpu") -> Tensor:
    raise GankitError(
        "a super-resolution run upscales images, it does not sample noise: use gankit upscale"
    )


def input_shapes(cfg: Config, img_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """G's one input: LR images in [-1, 1] of any size, (batch, C, height, width)."""
    return {"lr": ("batch", img_shape[0], "height", "width")}


def generate(nets: dict[str, nn.Module], lr: Tensor, labels: Tensor | None = None) -> Tensor:
    """SR images in [-1, 1] from LR images in [-1, 1]."""
    return nets["G"](lr)


def random_dihedral(hr: Tensor) -> Tensor:
    """The batch in one of the 8 symmetries of the square (4 rotations, each flipped or not),
    drawn from torch's global generator, which a checkpoint saves (as it does for dropout)."""
    code = int(torch.randint(8, ()))  # rotation code % 4, flipped when code >= 4
    hr = torch.rot90(hr, code % 4, dims=(2, 3))
    return hr.flip(3) if code >= 4 else hr


def _g_updates(opt: torch.optim.Optimizer) -> int:
    """G updates so far, read from Adam's state (so it survives a resume)."""
    states = list(opt.state.values())
    return int(states[0]["step"]) if states else 0


def step(nets, opts, batches, z_fn, game, train_g: bool = True) -> dict[str, Tensor]:
    """Stage 1 (no D, or during pretrain_steps): pixel MSE. Stage 2: the D step(s), then G on
    content + adv_weight * adversarial loss."""
    G, opt_g = nets["G"], opts["G"]
    if G.dihedral:
        batches = [(random_dihedral(hr), labels) for hr, labels in batches]
    out = {}
    if "D" not in nets or _g_updates(opt_g) < G.pretrain_steps:
        for hr, _ in batches:
            lr = downscale(hr, G.scale)
            with game.autocast():  # forwards and losses; backward and steps outside
                sr = G(lr)
                loss = G.pixel_loss(sr, hr)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
        mse = F.mse_loss(sr.detach(), hr)
        return {"loss/pixel": loss.detach(), "psnr/train": _psnr(mse)}
    D, opt_d, loss = nets["D"], opts["D"], GAN_LOSSES[game.loss]
    for i, (hr, _) in enumerate(batches):
        lr = downscale(hr, G.scale)
        with game.autocast():
            with torch.set_grad_enabled(i == len(batches) - 1 and train_g):
                sr = G(lr)
            real_logits, fake_logits = D(hr), D(sr.detach())  # separate batches: D has BatchNorm
            d_loss = loss.d(real_logits, fake_logits, game.real_target)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    out |= {"loss/D": d_loss.detach(), "D(x)": d_prob(real_logits, loss.logits)}
    out["D(G(z))"] = d_prob(fake_logits, loss.logits)
    mse = F.mse_loss(sr.detach(), hr)
    out |= {"psnr/train": _psnr(mse)}
    if train_g:
        D.requires_grad_(False)
        net = game.content_net
        with game.autocast():
            content = F.mse_loss(net(sr), net(hr)) if net is not None else G.pixel_loss(sr, hr)
            adversarial = loss.g(D(sr))
            g_loss = content + G.adv_weight * adversarial
        D.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        out |= {"loss/G": g_loss.detach(), "loss/content": content.detach()}
    return out


def _psnr(mse: Tensor) -> Tensor:
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))  # peak-to-peak 2 in [-1, 1]


# ---- upscaling whole images and scoring them -----------------------------------------------------


@torch.no_grad()
def upscale(G: nn.Module, lr: Tensor, scale: int, tile: int = 128, overlap: int = 24) -> Tensor:
    """Upscale one LR image (1, C, h, w) in [-1, 1], tile by tile for large images.

    Tiles overlap by `overlap` LR pixels on each side and only their centres are kept;
    with the overlap at least G's receptive radius (about 23 LR pixels for 8 blocks) the
    result equals upscaling the whole image at once.
    """
    _, c, h, w = lr.shape
    if h <= tile and w <= tile:
        return G(lr)
    out = lr.new_empty(1, c, h * scale, w * scale)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            y0, x0 = max(y - overlap, 0), max(x - overlap, 0)
            y1, x1 = min(y + tile + overlap, h), min(x + tile + overlap, w)
            sr = G(lr[:, :, y0:y1, x0:x1])
            ty, tx = (y - y0) * scale, (x - x0) * scale
            hh, ww = min(tile, h - y) * scale, min(tile, w - x) * scale
            out[:, :, y * scale : y * scale + hh, x * scale : x * scale + ww] = sr[
                :, :, ty : ty + hh, tx : tx + ww
            ]
    return out


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma Y in [16, 235] of uint8 RGB (H, W, 3), as float64 (the SR protocol)."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + x @ np.array([65.481, 128.553, 24.966])


def psnr_ssim(hr: np.ndarray, sr: np.ndarray, border: int) -> tuple[float, float]:
    """PSNR (dB) and SSIM on the Y channel of uint8 RGB images, `border` pixels cropped off
    each side (Ledig et al.'s protocol; SSIM with Wang et al.'s 11 x 11 Gaussian window)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = luma(hr), luma(sr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    same = np.array_equal(a, b)
    psnr = math.inf if same else peak_signal_noise_ratio(a, b, data_range=255)
    ssim = structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(psnr), float(ssim)


def to_tensor(rgb: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1]."""
    return torch.tensor(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1


def to_rgb(x: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    from gankit.data import to_uint8

    return to_uint8(x[0]).permute(1, 2, 0).cpu().numpy()


def upscale_photo(
    G: nn.Module, rgb: np.ndarray, scale: int, device="cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HR, bicubic x scale, G x scale) of a whole photograph (H, W, 3) uint8: HR is cropped
    to a multiple of the scale, LR made by the same bicubic downscaling as in training."""
    h, w = (rgb.shape[0] // scale) * scale, (rgb.shape[1] // scale) * scale
    hr = rgb[:h, :w]
    lr = downscale(to_tensor(hr).to(device), scale)
    return hr, to_rgb(bicubic(lr, scale)), to_rgb(upscale(G, lr, scale))


def evaluate_sr(G: nn.Module, photos: list[np.ndarray], scale: int, device) -> dict[str, float]:
    """Mean PSNR / SSIM of bicubic and of G on whole held-out images (`upscale_photo`)."""
    rows = {"bicubic": [], "model": []}
    for rgb in photos:
        hr, by_bicubic, by_model = upscale_photo(G, rgb, scale, device)
        rows["bicubic"].append(psnr_ssim(hr, by_bicubic, scale))
        rows["model"].append(psnr_ssim(hr, by_model, scale))
    out = {}
    for name, values in rows.items():
        prefix = "" if name == "model" else "bicubic_"
        out[f"{prefix}psnr_y"] = float(np.mean([v[0] for v in values]))
        out[f"{prefix}ssim_y"] = float(np.mean([v[1] for v in values]))
    return out
