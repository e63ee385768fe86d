"""StackGAN (Zhang et al., ICCV 2017), conditioned on the class label instead of a text embedding.

Two GANs stacked: Stage I draws a coarse image at half the side (14x14 for MNIST) from noise and
a conditioning vector; Stage II redraws it at full size (28x28) from the coarse image and a
second conditioning vector. Each conditioning vector comes from *conditioning augmentation*: the
label is mapped to a Gaussian ``N(mu(y), diag(sigma(y)^2))``, a vector ``c`` is sampled from it
with the reparameterisation trick, and ``KL(N(mu, sigma^2) || N(0, I))`` keeps the Gaussians
smooth. Each stage has its own class-conditional discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genbench.models.adversarial import adam, discriminator_probabilities, optimizer_step
from genbench.models.base import StepContext, evaluating, require
from genbench.models.cgan import CGANConfig, ClassConditionalGAN
from genbench.models.layers import DownBlock, plan_resolution, widths
from genbench.models.registry import register_model

DISCRIMINATOR_SLOPE = 0.2  # leaky ReLU in the discriminators, as in StackGAN
MIN_IMAGE_SIZE = 16  # the coarse stage needs at least 8 pixels a side


@dataclass
class StackGANConfig(CGANConfig):
    latent_dim: int = 64  # z of Stage I (100 in the paper)
    condition_dim: int = 16  # dimensions of each conditioning vector c (128 in the paper)
    residual_blocks: int = 2  # in the Stage-II generator (2 in the paper's figure, 4 in its code)
    # Loss weight on the KL of each conditioning augmentation, per dimension of c (the official
    # code's mean over dimensions with coefficient 2; the paper writes lambda = 1 on the KL).
    kl_weight: float = 2.0
    matching_aware: bool = True  # discriminators also see real images with a wrong label as fake
    # Training schedule: 0 trains both stages at every step; N > 0 trains Stage I alone for the
    # first N steps, then Stage II alone with Stage I fixed (the paper's schedule).
    stage2_start: int = 0
    # Concatenate the upsampled coarse image before Stage II's last conv (not in the paper:
    # without it Stage II collapsed to one image at the smoke budget).
    coarse_skip: bool = True

    def validate(self, image_shape):
        super().validate(image_shape)
        require(image_shape[-1] >= MIN_IMAGE_SIZE,
                f"stackgan needs images of at least {MIN_IMAGE_SIZE} px (the coarse stage draws "
                f"half the side), got {image_shape[-1]}; use --image-size {MIN_IMAGE_SIZE} or more")
        require(self.condition_dim >= 1, f"condition_dim must be >= 1, got {self.condition_dim}")
        require(self.residual_blocks >= 0, f"residual_blocks must be >= 0, got {self.residual_blocks}")
        require(self.stage2_start >= 0, f"stage2_start must be >= 0, got {self.stage2_start}")
        require(self.latent_method == "off", "stackgan has no latent optimisation: its two "
                "stages and conditioning augmentation have no single score to raise; use "
                "latent_method=off")


def conditioning_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` per example in nats, ``[B]``, for ``mean``
    and ``log_var`` ``[B, D]``: ``0.5 * sum_d (mean^2 + exp(log_var) - 1 - log_var)``."""
    mean, log_var = mean.float(), log_var.float()
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(1)


class ConditioningAugmentation(nn.Module):
    """Label ``y`` → ``(c, mean, log_var)``: ``[mean, log_var] = W onehot(y) + b`` (so each class
    has its own learned Gaussian), ``c = mean + exp(log_var / 2) * eps`` with ``eps ~ N(0, I)``;
    all ``[B, condition_dim]``. StackGAN maps a text embedding through a fully connected layer
    instead; the class label needs no embedding of its own.

    The means start as standard normal draws and the variances at 1 (``log_var = 0``), so the
    classes start apart (about 8 nats of KL each for 16 dimensions): a text embedding carries
    its information from the start, while with PyTorch's default initialisation (means within
    +-0.32) the classes began almost indistinguishable and the generators ignored them.
    """

    def __init__(self, num_classes: int, condition_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.to_gaussian = nn.Linear(num_classes, 2 * condition_dim)
        with torch.no_grad():
            mean_weight, log_var_weight = self.to_gaussian.weight.chunk(2, dim=0)  # [D, K] each
            mean_weight.normal_()
            log_var_weight.zero_()
            self.to_gaussian.bias.zero_()

    def forward(self, labels: torch.Tensor, noise: torch.Tensor | None = None):
        onehot = F.one_hot(labels, self.num_classes).float()  # [B] -> [B, K]
        mean, log_var = self.to_gaussian(onehot).chunk(2, dim=1)  # [B, D] each
        if noise is None:
            noise = torch.randn_like(mean)
        return mean + (0.5 * log_var).exp() * noise, mean, log_var


def upsample_block(c_in: int, c_out: int) -> nn.Module:
    """StackGAN's upsampling: nearest-neighbour x2, 3x3 conv, batch norm, ReLU (doubles the side)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


def to_image(channels_in: int, channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels_in, channels, 3, padding=1), nn.Tanh())


def resize_to(h: torch.Tensor, size: int) -> torch.Tensor:
    """``h`` resized to ``size`` a side (antialiased bilinear) when it is not already."""
    if h.shape[-1] == size:
        return h
    return F.interpolate(h, size=(size, size), mode="bilinear", antialias=True)


class StageOneGenerator(nn.Module):
    """``(z [B, latent_dim], c [B, D])`` → coarse image ``[B, C, s, s]`` in ``[-1, 1]``, ``s`` half
    the image side: a linear layer to the start square (4..7 px), upsampling blocks, 3x3 conv, tanh."""

    def __init__(self, latent_dim: int, condition_dim: int, channels: int, size: int, base_width: int):
        super().__init__()
        self.size = size
        self.start, doublings = plan_resolution(size)
        level_widths = widths(base_width, doublings)[::-1]  # coarse → fine
        self.project = nn.Sequential(
            nn.Linear(latent_dim + condition_dim, level_widths[0] * self.start**2, bias=False),
            nn.Unflatten(1, (level_widths[0], self.start, self.start)),
            nn.BatchNorm2d(level_widths[0]), nn.ReLU(),
        )
        self.ups = nn.Sequential(*[upsample_block(a, b) for a, b in zip(level_widths, level_widths[1:])])
        self.out = to_image(level_widths[-1], channels)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.ups(self.project(torch.cat([z, c], dim=1)))  # [B, base, start * 2**k, ...]
        return self.out(resize_to(h, self.size))  # [B, C, s, s]


class ResidualBlock(nn.Module):
    """``relu(x + BN(conv3x3(relu(BN(conv3x3(x))))))``, StackGAN's Stage-II residual block."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class StageTwoGenerator(nn.Module):
    """``(coarse [B, C, s, s], c [B, D])`` → image ``[B, C, size, size]`` in ``[-1, 1]``.

    As StackGAN's Stage-II generator: the coarse image is encoded down (3x3 conv, then a strided
    4x4 conv: ``s`` → ``s/2``), ``c`` is replicated over that map and concatenated, a 3x3 conv
    joins them, residual blocks refine, and upsampling blocks draw the image (``s/2`` → ``size``).
    No noise ``z``: as in the paper, the randomness is in the coarse image and ``c``. With
    ``coarse_skip`` (not in the paper), the coarse image, upsampled bilinearly, is concatenated to
    the last feature map before the final 3x3 conv, so Stage II can start from Stage I's drawing.
    """

    def __init__(self, condition_dim: int, channels: int, size: int, base_width: int,
                 residual_blocks: int, coarse_skip: bool = False):
        super().__init__()
        self.size, self.coarse_skip = size, coarse_skip
        width = 2 * base_width
        self.encode = nn.Sequential(
            nn.Conv2d(channels, base_width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(base_width, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.join = nn.Sequential(
            nn.Conv2d(width + condition_dim, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.residual = nn.Sequential(*[ResidualBlock(width) for _ in range(residual_blocks)])
        side, ups, c_in = size // 4, [], width
        while side * 2 <= size:  # double up to the image side (7 → 14 → 28 for MNIST)
            c_out = max(c_in // 2, 4)
            ups.append(upsample_block(c_in, c_out))
            side, c_in = side * 2, c_out
        self.ups = nn.Sequential(*ups)
        self.out = to_image(c_in + (channels if coarse_skip else 0), channels)

    def forward(self, coarse: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.encode(coarse)  # [B, 2 * base, s/2, s/2]
        maps = c[:, :, None, None].expand(-1, -1, *h.shape[2:])  # [B, D, s/2, s/2]
        h = self.residual(self.join(torch.cat([h, maps], dim=1)))
        h = resize_to(self.ups(h), self.size)  # [B, C', size, size]
        if self.coarse_skip:
            upsampled = F.interpolate(coarse, size=(self.size, self.size), mode="bilinear")
            h = torch.cat([h, upsampled.to(h.dtype)], dim=1)  # [B, C' + C, size, size]
        return self.out(h)  # [B, C, size, size]


class StageDiscriminator(nn.Module):
    """``D(x, y)`` for one stage: image ``[B, C, s, s]`` and labels ``[B]`` → one logit ``[B, 1]``.

    As StackGAN's discriminators: strided 4x4 convs (batch norm after the first, leaky ReLU 0.2)
    down to 4..7 px, the label's own embedding (``condition_dim``) replicated over that map and
    concatenated, a 3x3 conv joining them, then one linear layer over the map (the paper's 4x4
    convolution over its 4x4 map).
    """

    def __init__(self, image_shape: tuple[int, int, int], base_width: int, num_classes: int,
                 condition_dim: int):
        super().__init__()
        channels, size, _ = image_shape
        _, halvings = plan_resolution(size)
        level_widths = widths(base_width, max(halvings, 1) - 1)  # fine → coarse
        blocks, c_in = [], channels
        for i, c_out in enumerate(level_widths):
            blocks.append(DownBlock(c_in, c_out, "batch" if i else "none", DISCRIMINATOR_SLOPE,
                                    residual=False))
            c_in = c_out
        self.trunk = nn.Sequential(*blocks)
        self.num_classes = num_classes
        self.embed = nn.Linear(num_classes, condition_dim)
        self.join = nn.Sequential(
            nn.Conv2d(c_in + condition_dim, c_in, 3, padding=1, bias=False), nn.BatchNorm2d(c_in),
            nn.LeakyReLU(DISCRIMINATOR_SLOPE),
        )
        side = size
        for _ in level_widths:
            side //= 2  # each strided conv floors the half
        self.head = nn.Linear(c_in * side * side, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)  # [B, W, m, m]
        e = self.embed(F.one_hot(labels, self.num_classes).to(h.dtype))  # [B, D]
        maps = e[:, :, None, None].expand(-1, -1, *h.shape[2:])  # [B, D, m, m]
        return self.head(self.join(torch.cat([h, maps], dim=1)).flatten(1))  # [B, 1]


class Stage(nn.Module):
    """One stage's generator, its conditioning augmentation and its discriminator."""

    def __init__(self, generator: nn.Module, augment: ConditioningAugmentation,
                 discriminator: StageDiscriminator):
        super().__init__()
        self.generator, self.augment, self.discriminator = generator, augment, discriminator


@register_model("stackgan")
class StackGAN(ClassConditionalGAN):
    """StackGAN (Zhang et al., 2017) conditioned on the class: Stage I draws 14x14 images,
    Stage II refines them to 28x28; a class label instead of a text embedding, small networks.

    Conditioning augmentation (one per stage, as in the paper): the one-hot label goes through a
    linear layer to ``(mu, log sigma^2)`` and ``c = mu + sigma * eps``; the generator loss of each
    stage adds ``kl_weight * KL(N(mu, sigma^2) || N(0, I)) / condition_dim`` (nats per dimension,
    batch mean). Stage I: ``G1(z, c1)`` → coarse image at half the side (14 px for MNIST); its
    discriminator ``D1`` sees real images downscaled by area averaging. Stage II: ``G2(s1, c2)``
    encodes the coarse image ``s1`` (detached: each stage keeps its own objective), joins the
    replicated ``c2``, refines it with residual blocks and upsamples to full size; ``D2`` sees
    full-size images. Discriminators: strided convs, the label's embedding replicated over the last
    map, a joining 3x3 conv and a linear head. Non-saturating losses; with ``matching_aware`` (on,
    as in the paper) the discriminator loss is ``BCE(D(x, y), 1) + (BCE(D(x, y'), 0) +
    BCE(D(G, y), 0)) / 2`` with a wrong label ``y' != y`` (the official code's weighting), else
    ``BCE(D(x, y), 1) + BCE(D(G, y), 0)``. Adam 2e-4, betas (0.5, 0.999), batch 64.

    Schedule (``stage2_start``): 0 (default, for short budgets) trains both stages at every step;
    ``N > 0`` trains Stage I alone for ``N`` steps, then Stage II alone with Stage I fixed, which is
    the paper's schedule. ``sample(n, labels=...)`` returns the 28x28 Stage-II images;
    ``sample_stages`` returns the coarse images beside them. Sampling draws ``c`` from each
    stage's Gaussian, as the paper does at test time.

    Simplified from the paper: the condition is the class label (one-hot), not a char-CNN-RNN
    text embedding, so conditioning augmentation is one linear layer with no nonlinearity; the
    discriminators embed the label themselves rather than compressing a text embedding; sizes are
    28/14 px instead of 256/64 px, with narrower networks (``base_width``), a 16-d ``c`` instead
    of 128, 2 residual blocks and a 2x downsampling of the coarse image (4x in the paper); no
    learning-rate decay. Two additions for short CPU budgets, each measured on MNIST at 300 steps:
    ``coarse_skip`` (on by default; ``false`` is the paper's generator) hands Stage II the
    upsampled coarse image before its last conv (without it, Stage II drew one blob whatever the
    coarse image), and the class Gaussians start apart (see :class:`ConditioningAugmentation`;
    the suite classifier recognised the class of 16% of 80 per-class samples without it, even at
    ``kl_weight=0.1``, and of 57% with it; ``cgan``: 44%).
    Like ``cgan``, no ``prior()``: the likelihood metrics report n/a.
    """

    config_class = StackGANConfig
    loss_names = ("d1_loss", "g1_loss", "kl1", "d2_loss", "g2_loss", "kl2", "d1_real", "d1_fake",
                  "d2_real", "d2_fake")

    def __init__(self, config: StackGANConfig, image_shape):
        super().__init__(config, image_shape)
        channels, size, _ = image_shape
        self.coarse_size = size // 2
        w, k, d = config.base_width, config.num_classes, config.condition_dim
        self.stage1 = Stage(
            StageOneGenerator(config.latent_dim, d, channels, self.coarse_size, w),
            ConditioningAugmentation(k, d),
            StageDiscriminator((channels, self.coarse_size, self.coarse_size), w, k, d),
        )
        self.stage2 = Stage(
            StageTwoGenerator(d, channels, size, w, config.residual_blocks, config.coarse_skip),
            ConditioningAugmentation(k, d),
            StageDiscriminator(image_shape, w, k, d),
        )

    def build_optimizers(self):
        c = self.config
        self.optimizers = {}
        for name, stage in (("1", self.stage1), ("2", self.stage2)):
            generator = list(stage.generator.parameters()) + list(stage.augment.parameters())
            self.optimizers[f"generator{name}"] = adam(generator, c.learning_rate, c)
            self.optimizers[f"discriminator{name}"] = adam(stage.discriminator, c.learning_rate, c)
        return self.optimizers

    def downscale(self, images: torch.Tensor) -> torch.Tensor:
        """Real images ``[B, C, size, size]`` → ``[B, C, size/2, size/2]`` by area averaging (2x2
        means for even sides): what Stage I's discriminator sees as real."""
        return F.interpolate(images, size=(self.coarse_size,) * 2, mode="area")

    # --- sampling ----------------------------------------------------------------------------------

    def _stages(self, z: torch.Tensor, labels: torch.Tensor, eps1: torch.Tensor | None = None,
                eps2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse [B, C, s, s], image [B, C, size, size])`` from ``z`` and labels, with the
        conditioning noise ``eps1``, ``eps2`` ``[B, condition_dim]`` (drawn here when None)."""
        c1, _, _ = self.stage1.augment(labels, eps1)
        coarse = self.stage1.generator(z, c1)
        c2, _, _ = self.stage2.augment(labels, eps2)
        return coarse, self.stage2.generator(coarse, c2)

    @evaluating
    @torch.no_grad()
    def sample_stages(self, n: int, generator: torch.Generator | None = None,
                      labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse [n, C, size/2, size/2], image [n, C, size, size])``, both in ``[-1, 1]``: the
        Stage-I images and the Stage-II images drawn from them, of classes ``labels`` (int64
        ``[n]``, uniform when None). Draws ``z``, the labels, then each stage's ``eps``, so one
        seed gives the same ``z`` whatever the labels."""
        z = self.randn(n, self.config.latent_dim, generator=generator)
        labels = self.random_labels(n, generator) if labels is None else self.check_labels(labels, n)
        eps1 = self.randn(n, self.config.condition_dim, generator=generator)
        eps2 = self.randn(n, self.config.condition_dim, generator=generator)
        coarse, image = self._stages(z, labels, eps1, eps2)
        return coarse.float(), image.float()

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` Stage-II images ``[n, C, H, W]`` in ``[-1, 1]`` of classes ``labels`` (uniform when
        None); the second half of :meth:`sample_stages`."""
        return self.sample_stages(n, generator, labels)[1]

    @evaluating
    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Stage-II images for ``z [B, latent_dim]`` and int64 ``labels [B]``, with ``c`` at each
        Gaussian's mean (no conditioning noise): ``[B, C, H, W]`` in ``[-1, 1]``."""
        labels = self.check_labels(labels, z.shape[0])
        zeros = torch.zeros(z.shape[0], self.config.condition_dim, device=z.device)
        return self._stages(z, labels, zeros, zeros)[1].float()

    # --- training ----------------------------------------------------------------------------------

    def _stage_step(self, stage: Stage, name: str, real: torch.Tensor, fake: torch.Tensor,
                    labels: torch.Tensor, kl: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        """One discriminator and one generator step of ``stage`` on ``real`` and ``fake`` images
        (``fake`` still attached to its generator and augmentation) of classes ``labels``."""
        c, bce = self.config, F.binary_cross_entropy_with_logits
        opt_g, opt_d = self.optimizers[f"generator{name}"], self.optimizers[f"discriminator{name}"]
        with ctx.autocast():
            real_logits = stage.discriminator(real, labels)
            fake_logits = stage.discriminator(fake.detach(), labels)
            real_loss = bce(real_logits, torch.ones_like(real_logits))
            fake_loss = bce(fake_logits, torch.zeros_like(fake_logits))
            if c.matching_aware:  # a real image with another class's label is also fake
                shift = torch.randint(1, c.num_classes, labels.shape, device=labels.device)
                wrong_logits = stage.discriminator(real, (labels + shift) % c.num_classes)
                wrong_loss = bce(wrong_logits, torch.zeros_like(wrong_logits))
                d_loss = real_loss + 0.5 * (wrong_loss + fake_loss)
            else:
                d_loss = real_loss + fake_loss
        optimizer_step(ctx, opt_d, d_loss)

        with ctx.autocast():
            gen_logits = stage.discriminator(fake, labels)
            g_loss = bce(gen_logits, torch.ones_like(gen_logits))
        total = g_loss + c.kl_weight * kl.mean() / c.condition_dim
        optimizer_step(ctx, opt_g, total, opt_g.param_groups[0]["params"])
        return {f"d{name}_loss": d_loss.item(), f"g{name}_loss": g_loss.item(),
                f"kl{name}": kl.mean().item(),
                **discriminator_probabilities(real_logits, fake_logits, suffix=name)}

    def train_step(self, batch, step, ctx: StepContext, labels: torch.Tensor | None = None):
        """Stage I and/or Stage II steps (see ``stage2_start``); ``labels`` int64 ``[B]`` (uniform
        if None). Logged ``kl1``/``kl2`` are in nats per example; ``d*_real``/``d*_fake`` are mean
        discriminator probabilities."""
        c = self.config
        labels = self.check_labels(labels, batch.shape[0], batch.device)
        train_one = c.stage2_start == 0 or step < c.stage2_start
        train_two = c.stage2_start == 0 or step >= c.stage2_start
        z = torch.randn(batch.shape[0], c.latent_dim, device=batch.device)
        losses = {}
        # A fixed Stage I (the paper's schedule) runs in eval mode: its batch-norm statistics
        # stay as trained, and Stage II learns from the coarse images that sampling will give it.
        self.stage1.train(self.training and train_one)
        with ctx.autocast(), torch.set_grad_enabled(train_one):
            c1, mean1, log_var1 = self.stage1.augment(labels)
            coarse = self.stage1.generator(z, c1)
        self.stage1.train(self.training)
        if train_one:
            with ctx.full_precision():
                kl1 = conditioning_kl(mean1, log_var1)
            losses |= self._stage_step(self.stage1, "1", self.downscale(batch), coarse, labels, kl1, ctx)
        if train_two:
            with ctx.autocast():
                c2, mean2, log_var2 = self.stage2.augment(labels)
                fine = self.stage2.generator(coarse.detach(), c2)
            with ctx.full_precision():
                kl2 = conditioning_kl(mean2, log_var2)
            losses |= self._stage_step(self.stage2, "2", batch, fine, labels, kl2, ctx)
        return losses
