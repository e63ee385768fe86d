"""Self-Attention GAN (Zhang et al. 2019) and its class-conditional BigGAN variant (Brock et al. 2019).

Both networks are DCGAN-shaped (``layers.py`` sizes: 4..7 px up or down to the image) with
spectral normalisation on every conv and linear weight and one SAGAN self-attention block at a
middle resolution; training uses the hinge loss and two time-scale learning rates. ``biggan``
adds BigGAN's class-conditional batch norm in G, a projection discriminator, orthogonal
regularisation and the truncation trick. The pieces (attention block, hinge losses, orthogonal
penalty, truncated normal) are plain functions and modules that other GAN files can import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from genbench.models.adversarial import (
    LatentOptimisation,
    adam_pair,
    discriminator_step,
    optimizer_step,
)
from genbench.models.base import (
    GenerativeModel,
    ModelConfig,
    StepContext,
    as_class_labels,
    evaluating,
    require,
)
from genbench.models.cgan import ClassConditionalSampling
from genbench.models.gan import LatentGenerator
from genbench.models.layers import plan_resolution, widths
from genbench.models.registry import register_model

MIN_TRUNCATION = 0.01  # below this, resampling |z_i| <= t needs thousands of rounds


def sn(module: nn.Module) -> nn.Module:
    """``module`` with its ``weight`` spectrally normalised (one power iteration per training forward)."""
    return spectral_norm(module)


class SelfAttention(nn.Module):
    """SAGAN's self-attention block: ``y = x + gamma * o``, ``gamma`` learned and 0 at the start.

    Query ``f`` and key ``g`` are 1x1 convs to ``C/8`` channels, value ``h`` a 1x1 conv to ``C/2``
    and ``v`` a 1x1 conv back to ``C`` (the BigGAN-PyTorch widths; the paper's value has ``C/8``):
    ``o_j = v(sum_i softmax_i(f(x_i) . g(x_j)) h(x_i))``, a softmax over all ``N = H * W`` positions.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner, value = max(channels // 8, 1), max(channels // 2, 1)
        self.query = sn(nn.Conv2d(channels, inner, 1, bias=False))
        self.key = sn(nn.Conv2d(channels, inner, 1, bias=False))
        self.value = sn(nn.Conv2d(channels, value, 1, bias=False))
        self.out = sn(nn.Conv2d(value, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).flatten(2)  # [B, C/8, N]
        k = self.key(x).flatten(2)  # [B, C/8, N]
        v = self.value(x).flatten(2)  # [B, C/2, N]
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=1)  # [B, N_i, N_j], sums to 1 over i
        o = (v @ attention).view(b, -1, h, w)  # [B, C/2, N_j] -> [B, C/2, H, W]
        return x + self.gamma * self.out(o)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]``."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-E[D(G(z))]``."""
    return -fake_logits.mean()


def orthogonal_penalty(weight: torch.Tensor) -> torch.Tensor:
    """BigGAN's off-diagonal orthogonality penalty ``||W W^T * (1 - I)||_F^2`` (a scalar).

    ``W`` is ``weight`` flattened to ``[rows, fan_in]`` (for a conv, one row per output filter), so
    the penalty is the squared cosine-like overlap of distinct filters; their norms are free. With
    more rows than columns the equal form ``||W^T W||_F^2 - sum_i ||w_i||^4`` avoids a
    ``rows x rows`` Gram matrix (a 64 px generator's first layer has 8192 rows).
    """
    w = weight.flatten(1).float()
    if w.shape[0] <= w.shape[1]:
        gram = w @ w.T  # [rows, rows]
        return (gram - torch.diag_embed(torch.diagonal(gram))).pow(2).sum()
    return (w.T @ w).pow(2).sum() - w.pow(2).sum(1).pow(2).sum()


def raw_weights(module: nn.Module) -> list[torch.Tensor]:
    """The unnormalised weights (before spectral norm) of every conv and linear layer in ``module``."""
    found = []
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if parametrize.is_parametrized(layer, "weight"):
                found.append(layer.parametrizations.weight.original)
            else:
                found.append(layer.weight)
    return found


def truncated_normal(shape: tuple[int, ...], threshold: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """``N(0, I)`` noise with every entry resampled until ``|z_i| <= threshold`` (BigGAN's truncation
    trick). With ``generator`` it is drawn on the CPU (reproducible on every device), then moved."""
    where = "cpu" if generator is not None else device
    z = torch.randn(shape, generator=generator, device=where)
    outside = z.abs() > threshold
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator, device=where)
        outside = z.abs() > threshold
    return z.to(device)


class BatchNorm(nn.Module):
    """Batch norm whose gain and bias come from a class embedding ``e`` when ``embedding_dim`` is
    set (BigGAN's conditional batch norm: ``gain = 1 + W_g e``, ``bias = W_b e``), or are learned
    constants otherwise."""

    def __init__(self, channels: int, embedding_dim: int = 0):
        super().__init__()
        self.conditional = embedding_dim > 0
        self.norm = nn.BatchNorm2d(channels, affine=not self.conditional)
        if self.conditional:
            self.gain = sn(nn.Linear(embedding_dim, channels, bias=False))
            self.bias = sn(nn.Linear(embedding_dim, channels, bias=False))

    def forward(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if not self.conditional:
            return x
        return x * (1 + self.gain(e))[:, :, None, None] + self.bias(e)[:, :, None, None]


class Generator(nn.Module):
    """``G(z[, y])``: ``z [B, latent_dim]`` → ``[B, C, size, size]`` in ``[-1, 1]``.

    A spectrally normalised linear layer (no bias) to the start square (4..7 px), then doubling 4x4
    transposed convs with (conditional) batch norm and ReLU, self-attention after ``doublings // 2``
    doublings (14 px for 28 px images, 8 px for 32 px), a 3x3 conv and ``tanh``. With
    ``num_classes`` the label's shared embedding conditions every batch norm.
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], base_width: int,
                 num_classes: int = 0, embedding_dim: int = 0):
        super().__init__()
        channels, size, _ = image_shape
        self.size = size
        self.start, doublings = plan_resolution(size)
        level_widths = widths(base_width, doublings)[::-1]  # coarse → fine
        self.embed = nn.Embedding(num_classes, embedding_dim) if num_classes else None
        cond = embedding_dim if num_classes else 0
        # No bias: spectral norm shrinks W z but not a bias, and a learned per-pixel bias then
        # outweighs z (a z-independent template: all samples alike on MNIST within 300 steps).
        self.project = sn(nn.Linear(latent_dim, level_widths[0] * self.start**2, bias=False))
        self.norms = nn.ModuleList([BatchNorm(w, cond) for w in level_widths])
        self.ups = nn.ModuleList([sn(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False))
                                  for a, b in zip(level_widths, level_widths[1:])])
        self.attention_level = doublings // 2
        self.attention = SelfAttention(level_widths[self.attention_level])
        self.to_image = sn(nn.Conv2d(level_widths[-1], channels, 3, padding=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embed(labels) if self.embed is not None else None  # [B, embedding_dim]
        h = self.project(z).unflatten(1, (-1, self.start, self.start))  # [B, W0, start, start]
        h = F.relu(self.norms[0](h, e))
        for level, norm in enumerate(self.norms[1:]):
            if level == self.attention_level:
                h = self.attention(h)
            h = F.relu(norm(self.ups[level](h), e))  # side doubles
        if self.attention_level == len(self.ups):
            h = self.attention(h)
        if h.shape[-1] != self.size:
            h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", antialias=True)
        return torch.tanh(self.to_image(h))  # [B, C, size, size]


class Discriminator(nn.Module):
    """``D(x[, y])``: image ``[B, C, size, size]`` → one logit ``[B, 1]``.

    Spectrally normalised 4x4 stride-2 convs with leaky ReLU 0.1 down to 4..7 px, self-attention
    at the generator's attention resolution, the last map flattened to features ``phi(x)`` and a
    linear head (as in DCGAN: with BigGAN's global sum pooling instead, these small networks
    collapsed to one pattern on MNIST within 300 steps). With ``num_classes``, the projection
    discriminator (Miyato & Koyama 2018, used by BigGAN) adds ``embed(y) . phi(x)``.
    """

    def __init__(self, image_shape: tuple[int, int, int], base_width: int, num_classes: int = 0):
        super().__init__()
        channels, size, _ = image_shape
        _, halvings = plan_resolution(size)
        level_widths = widths(base_width, max(halvings, 1) - 1)  # fine → coarse
        self.blocks = nn.ModuleList()
        c_in = channels
        for c_out in level_widths:
            self.blocks.append(nn.Sequential(sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)),
                                             nn.LeakyReLU(0.1)))
            c_in = c_out
        self.attention_after = max(halvings - halvings // 2 - 1, 0)  # block index, mirrors G
        self.attention = SelfAttention(level_widths[self.attention_after])
        features = c_in * (size // 2 ** len(level_widths)) ** 2  # each conv floors the side's half
        self.head = sn(nn.Linear(features, 1))
        self.embed = sn(nn.Embedding(num_classes, features)) if num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)  # side halves
            if i == self.attention_after:
                h = self.attention(h)
        features = h.flatten(1)  # [B, W, s, s] -> [B, W * s * s]
        logits = self.head(features)  # [B, 1]
        if self.embed is not None:
            logits = logits + (self.embed(labels) * features).sum(1, keepdim=True)
        return logits


@dataclass
class SAGANConfig(LatentOptimisation, ModelConfig):
    latent_dim: int = 64
    base_width: int = 32
    g_learning_rate: float = 1e-4  # two time-scale update rule: D learns 4x faster
    d_learning_rate: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    conditional_bn: bool = False  # class-conditional batch norm in G: the `biggan` model
    orthogonal_weight: float = 0.0  # beta of BigGAN's orthogonal regularisation of G (1e-4 there)
    truncation: float | None = None  # sample() resamples z until every |z_i| <= truncation

    def validate(self, image_shape):
        self.validate_shared()
        require(not self.conditional_bn, "conditional_bn=true makes the model class-conditional: "
                "use the model 'biggan', which is trained with the labels")

    def validate_shared(self) -> None:
        """The rules every hinge GAN config here keeps (``sagan``, ``biggan``, ``logan``)."""
        for name in ("g_learning_rate", "d_learning_rate"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        require(self.truncation is None or self.truncation >= MIN_TRUNCATION,
                f"truncation must be >= {MIN_TRUNCATION} or none, got {self.truncation}")
        self.validate_latent_optimisation()


class HingeGAN(GenerativeModel):
    """What ``sagan``, ``biggan`` and ``logan`` share: the networks above, TTUR Adam, hinge loss
    with one discriminator and one generator step per batch, optional orthogonal regularisation,
    truncated sampling, optional first-order latent optimisation (``latent_method``)."""

    loss_names = ("d_loss", "g_loss", "d_real", "d_fake", "orthogonal")

    def __init__(self, config: SAGANConfig, image_shape, num_classes: int = 0, embedding_dim: int = 0):
        super().__init__(config, image_shape)
        self.generator = Generator(config.latent_dim, image_shape, config.base_width,
                                   num_classes, embedding_dim)
        self.discriminator = Discriminator(image_shape, config.base_width, num_classes)

    def build_optimizers(self):
        c = self.config
        self.optimizers = adam_pair(self.generator, self.discriminator, c, c.g_learning_rate,
                                    c.d_learning_rate)
        return self.optimizers

    def orthogonal_regulariser(self) -> torch.Tensor:
        """``orthogonal_weight * sum_W ||W W^T * (1 - I)||_F^2`` over G's conv and linear weights
        (not the class embedding, as in BigGAN)."""
        return self.config.orthogonal_weight * sum(orthogonal_penalty(w) for w in raw_weights(self.generator))

    def latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z [n, latent_dim]``: standard normal, truncated to ``|z_i| <= truncation`` when set."""
        if self.config.truncation is None:
            return self.randn(n, self.config.latent_dim, generator=generator)
        return truncated_normal((n, self.config.latent_dim), self.config.truncation, generator, self.device)

    def hinge_step(self, batch: torch.Tensor, ctx: StepContext, labels: torch.Tensor | None = None):
        """One discriminator step, then one generator step, on ``batch`` (and its ``labels``)."""
        z = torch.randn(batch.shape[0], self.config.latent_dim, device=batch.device)
        discriminate = lambda x: self.discriminator(x, labels)
        z = self.config.optimised_latents(z, lambda z: discriminate(self.generator(z, labels)))
        d = discriminator_step(ctx, self.optimizers["discriminator"], batch,
                               lambda: self.generator(z, labels), discriminate,
                               loss=lambda real, fake: hinge_d_loss(real.float(), fake.float()))

        with ctx.autocast():
            g_loss = hinge_g_loss(discriminate(d.fake).float())
        losses = {"d_loss": d.loss.item(), "g_loss": g_loss.item(),
                  "d_real": d.real_logits.float().mean().item(),
                  "d_fake": d.fake_logits.float().mean().item()}
        if self.config.orthogonal_weight > 0:
            penalty = self.orthogonal_regulariser()
            g_loss = g_loss + penalty
            losses["orthogonal"] = penalty.item()
        optimizer_step(ctx, self.optimizers["generator"], g_loss, self.generator.parameters())
        return losses


@register_model("sagan")
class SAGAN(HingeGAN, LatentGenerator):
    """Self-Attention GAN (Zhang et al., 2019): self-attention, spectral norm in G and D, hinge loss, TTUR.

    Generator and discriminator are DCGAN-shaped (transposed/strided 4x4 convs, batch norm in G
    only) with one self-attention block each at a middle resolution (14 px for 28 px images, 8 px
    for 32 px) and spectral normalisation on every conv and linear weight of both networks; D ends
    in a linear layer on its flattened last feature map.
    Losses: ``E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]`` for D, ``-E[D(G(z))]`` for G; Adam
    with betas (0, 0.9), learning rates 1e-4 (G) and 4e-4 (D), one step each per batch. Logged
    ``d_real``/``d_fake`` are mean logits.

    Simplified from the paper: its ImageNet networks are residual (ResBlocks, attention at 32 and
    64 px, widths up to 1024, global sum pooling in D); here they are the small DCGAN networks of
    ``layers.py`` (sum pooling collapsed them to one pattern on MNIST). ``orthogonal_weight`` and
    ``truncation`` are BigGAN's options, off by default; the class-conditional variant is ``biggan``.
    """

    config_class = SAGANConfig

    def train_step(self, batch, step, ctx: StepContext):
        return self.hinge_step(batch, ctx)

    @evaluating
    @torch.no_grad()
    def sample(self, n, generator=None):
        """``n`` images ``[n, C, H, W]`` in ``[-1, 1]``; ``z`` is truncated when ``truncation`` is set."""
        return self.generator(self.latents(n, generator)).float()


@dataclass
class BigGANConfig(SAGANConfig):
    beta2: float = 0.999
    conditional_bn: bool = True
    orthogonal_weight: float = 1e-4
    num_classes: int = 10  # labels are 0..num_classes-1 (10 for mnist, fashion-mnist, cifar10)
    embedding_dim: int = 32  # shared class embedding feeding every conditional batch norm

    def validate(self, image_shape):
        require(self.conditional_bn, "biggan is class-conditional: conditional_bn must be true "
                "(use the model 'sagan' for an unconditional one)")
        require(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        require(self.embedding_dim >= 1, f"embedding_dim must be >= 1, got {self.embedding_dim}")
        self.validate_shared()


@register_model("biggan")
class BigGAN(ClassConditionalSampling, HingeGAN):
    """Class-conditional SAGAN with BigGAN's tricks (Brock et al., 2019): conditional batch norm,
    projection D, orthogonal regularisation, truncation.

    The generator's batch norms take their gains (``1 + W_g e``) and biases (``W_b e``) from a
    shared embedding ``e`` of the label; the discriminator adds the projection ``embed(y) . phi(x)``
    to its logit. G's conv and linear weights get the off-diagonal orthogonal regulariser
    ``1e-4 * ||W W^T * (1 - I)||_F^2``; ``truncation`` resamples ``z`` at sampling time. Hinge loss,
    Adam (0, 0.999) with 1e-4 (G) and 4e-4 (D). Labels come from the dataset (the harness passes
    them); without them (``labels=None``) they are drawn uniformly.

    Simplified from the paper: the SAGAN networks above (DCGAN-shaped, not BigGAN's residual
    blocks); no skip-z (the batch norms see the class embedding only, not chunks of ``z``), one
    discriminator step per generator step (BigGAN takes two), no moving average of G's weights.
    No ``prior()``: ``p(x)`` would sum over classes, so the likelihood metrics report n/a.
    """

    config_class = BigGANConfig
    conditional = True

    def __init__(self, config: BigGANConfig, image_shape):
        super().__init__(config, image_shape, config.num_classes, config.embedding_dim)

    def check_labels(self, labels: torch.Tensor | None, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """``labels`` as int64 ``[n]`` on the model's device, or uniform ones (drawn with
        ``generator`` on the CPU if given) when None; a one-line error when they do not fit."""
        k = self.config.num_classes
        if labels is None:
            if generator is not None:
                return torch.randint(k, (n,), generator=generator).to(self.device)
            return torch.randint(k, (n,), device=self.device)
        return as_class_labels(labels, n, k, self.device)

    def train_step(self, batch, step, ctx: StepContext, labels: torch.Tensor | None = None):
        """One discriminator and one generator step; ``labels`` int64 ``[B]`` (uniform if None)."""
        return self.hinge_step(batch, ctx, self.check_labels(labels, batch.shape[0]))

    @evaluating
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images ``[n, C, H, W]`` in ``[-1, 1]`` of classes ``labels`` (int64 ``[n]``), uniform
        when None. ``z`` (truncated if set) is drawn first, so one seed gives the same ``z`` whatever
        the labels."""
        z = self.latents(n, generator)
        return self.generator(z, self.check_labels(labels, n, generator)).float()
