"""Resolution-free CPPN generator trained against a (K+1)-class classifier, with a VAE encoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from genbench.core.errors import UsageError
from genbench.models.adversarial import adam
from genbench.models.base import ModelConfig, StepContext, as_class_labels, evaluating, require
from genbench.models.gan import EncodedLatentGenerator, diagonal_gaussian
from genbench.models.layers import ConvEncoder
from genbench.models.registry import register_model

# Points (pixels) pushed through the coordinate network at once by render(): 2**18 points of a
# 64-wide net hold ~64 MiB per activation, so a 1080 x 1080 image (1.17 M pixels) takes 5 chunks.
RENDER_CHUNK_POINTS = 2**18


@dataclass
class CPPNConfig(ModelConfig):
    latent_dim: int = 32
    base_width: int = 32  # hidden width of the coordinate network (the article's has 6 nodes)
    num_blocks: int = 3  # residual blocks (the article: 24)
    layers_per_block: int = 4  # ReLU layers in each block, before its tanh layer (article: 4)
    input_init_std: float = 0.4  # input-layer weights (the code: std 0.05 on inputs scaled by 8)
    init_gain: float = 2.45  # ReLU-layer weights ~ N(0, (init_gain / sqrt(fan_in))^2): std 1 at width 6
    block_output_init_std: float = 0.001  # each block's tanh layer starts near zero (identity)
    conv_width: int = 32  # base width of the encoder and the classifier (convnets)
    num_classes: int = 10  # K real classes; the classifier has K + 1 outputs
    kl_weight: float = 0.0128  # on KL(q(z|x) || N(0, I)) in nats per image; the code's 10 / 784
    fake_weight: float = 0.1  # the classifier's fake terms against its real-class term (code: 1/10)
    prior_weight: float = 1.0  # on the prior-sample terms; 0 gives the article's objective
    balance: bool = True  # update the classifier only when it is not ahead (the code's rule)
    learning_rate: float = 2e-4  # generator and encoder
    discriminator_learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def validate(self, image_shape):
        require(self.num_blocks >= 0, f"num_blocks must be >= 0, got {self.num_blocks}")
        require(self.layers_per_block >= 1,
                f"layers_per_block must be >= 1, got {self.layers_per_block}")
        require(self.init_gain > 0, f"init_gain must be > 0, got {self.init_gain}")
        require(self.input_init_std > 0, f"input_init_std must be > 0, got {self.input_init_std}")
        require(self.block_output_init_std >= 0,
                f"block_output_init_std must be >= 0, got {self.block_output_init_std}")
        require(self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}")
        require(self.discriminator_learning_rate > 0, "discriminator_learning_rate must be > 0")
        require(image_shape[1] == image_shape[2],
                f"cppn renders square images, got {image_shape[1]}x{image_shape[2]}")


def coordinate_grid(size: int, device=None, rows: slice = slice(None)) -> torch.Tensor:
    """``[rows, size, 3]`` per-pixel ``(x, y, r)`` of a ``size x size`` image of the square
    ``[-1, 1]^2``: each pixel is sampled at its centre, ``x = -1 + (2j + 1) / size`` for column
    ``j`` (``y`` likewise for rows, top to bottom), ``r = sqrt(x^2 + y^2)``. With centres, the
    mean of a 2x2 block of a ``2n``-pixel grid is exactly the ``n``-pixel grid's centre."""
    axis = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1  # [size]
    y, x = torch.meshgrid(axis[rows], axis, indexing="ij")  # [rows, size] each
    return torch.stack([x, y, torch.sqrt(x * x + y * y)], dim=-1)


class ResidualBlock(nn.Module):
    """``h + tanh(W_out relu(W_n ... relu(W_1 h)))`` (the article's block: 4 ReLU layers, 1 tanh).

    The ReLU layers start with large weights (``init_gain / sqrt(fan_in)``, the article's std 1.0
    at width 6 is gain 2.45); the tanh layer starts near zero, so each block starts close to the
    identity and training lets its random features in gradually."""

    def __init__(self, width: int, layers: int, init_gain: float, output_init_std: float):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.out = nn.Linear(width, width)
        for layer in self.hidden:
            nn.init.normal_(layer.weight, std=init_gain / math.sqrt(width))
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.out.weight, std=output_init_std)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        residual = h  # [..., width]
        for layer in self.hidden:
            h = F.relu(layer(h))
        return residual + torch.tanh(self.out(h))


class CoordinateGenerator(nn.Module):
    """``G(z)(x, y, r)``: a per-pixel MLP of ``[x, y, r, z]`` → ``C`` values in ``[-1, 1]``:
    ``tanh`` input layer, residual blocks, ``tanh`` output layer.

    Equivalent to 1x1 convolutions over the grid ``[B, 3 + latent_dim, H, W]``, computed
    channels-last: the input layer's ``z`` part is applied once per image and broadcast over the
    pixels, so the concatenated grid is never built.
    """

    def __init__(self, latent_dim: int, channels: int, size: int, config: CPPNConfig):
        super().__init__()
        width = config.base_width
        self.size = size
        self.input = nn.Linear(3 + latent_dim, width)  # columns: x, y, r, then z
        nn.init.normal_(self.input.weight, std=config.input_init_std)
        nn.init.normal_(self.input.bias, std=config.input_init_std)
        self.blocks = nn.Sequential(*[
            ResidualBlock(width, config.layers_per_block, config.init_gain,
                          config.block_output_init_std)
            for _ in range(config.num_blocks)
        ])
        self.to_pixel = nn.Linear(width, channels)

    def points(self, z: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Pixel values ``[B, rows, cols, C]`` for ``z [B, latent_dim]`` at ``coords [rows, cols, 3]``."""
        w_coords, w_z = self.input.weight[:, :3], self.input.weight[:, 3:]
        per_image = F.linear(z, w_z, self.input.bias)  # [B, width]
        h = F.linear(coords.to(per_image.dtype), w_coords)  # [rows, cols, width]
        h = torch.tanh(h.unsqueeze(0) + per_image[:, None, None, :])  # [B, rows, cols, width]
        return torch.tanh(self.to_pixel(self.blocks(h)))  # [B, rows, cols, C]

    def forward(self, z: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """``[B, C, size, size]`` in ``[-1, 1]`` (default: the training size), in one pass."""
        size = size or self.size
        coords = coordinate_grid(size, z.device)  # [size, size, 3]
        return self.points(z, coords).permute(0, 3, 1, 2)  # [B, size, size, C] -> [B, C, size, size]


@register_model("cppn")
class CPPN(EncodedLatentGenerator):
    """Resolution-free CPPN generator (residual coordinate MLP) with a VAE encoder, trained against
    a (K+1)-class classifier; renders at any size.

    Source: "Generating Large Images from Latent Vectors - Part Two" (hardmaru, 2016; Chinese
    translation in ../shared/references/002) and its code (hardmaru/resnet-cppn-gan-tensorflow,
    ``model.py``), which fixes what the article leaves open. The generator maps a latent ``z`` and
    each pixel's coordinates ``(x, y, r)``, ``x, y`` in ``[-1, 1]``, ``r = sqrt(x^2 + y^2)``, to that
    pixel's value, so the weights trained on 28x28 images render a 1080x1080 image with
    :meth:`render`. Network (the code's): a ``tanh`` input layer on ``[x, y, r, z]``; residual
    blocks, each ``layers_per_block`` ReLU layers with large initial weights and one ``tanh`` layer
    initialised near zero, added to the block's input; a ``tanh`` output layer (the code: sigmoid).

    Objective (the article's, per image, averaged over the batch). With ``x`` a training image of
    class ``y`` in ``0..K-1``, ``z ~ q(z|x)`` (Gaussian encoder), ``x_rec = G(z)``, and ``C`` the
    classifier's softmax over ``K + 1`` classes, class ``K`` meaning "fake":

    - classifier: ``-log C(y | x) + fake_weight * -log C(K | x_rec)``: real images to their class,
      generated images to "fake" (the code weighs the two 10 : 1, ``fake_weight = 0.1``);
    - encoder and generator, in one update: ``-log C(y | x_rec) + kl_weight * KL(q(z|x) || N(0, I))``
      (nats): the reconstruction must be classified as the *class of the encoded image*, not match
      its pixels; there is no pixel reconstruction loss. ``kl_weight = 10 / 784`` is the code's
      (10 x the KL averaged over 784 pixels).

    Added to the article (it trains only on encoded ``z``), because :meth:`sample` draws ``z`` from
    the prior: images ``x_p = G(z_p)``, ``z_p ~ N(0, I)``, are also "fake" for the classifier
    (``+ fake_weight * prior_weight * -log C(K | x_p)``), and the generator makes them look like
    *some* real class (``+ prior_weight * -log sum_{k<K} C(k | x_p)``). ``prior_weight=0`` is the
    article's objective.

    Without labels (``labels=None``: the contract test, unlabelled data) the class terms become
    "any real class", ``-log sum_{k<K} C(k | .)``, for real images and reconstructions, so the
    model still trains as a real/fake GAN but learns nothing about classes.

    Balance ("we always need to slow the discriminator down"): each batch takes one encoder and
    generator step, then, with ``balance=true``, the classifier learns its whole loss only while it
    catches fewer than 70 % of the generated images, else its real-image term only while it
    classifies fewer than 60 % of the real batch correctly, else it rests (:func:`classifier_update`).
    Adam (``learning_rate`` for encoder and generator, ``discriminator_learning_rate``). Losses:
    ``class_accuracy`` on the real batch, ``g_accuracy`` the reconstructions classified as their
    image's class, ``fake_accuracy`` the generated images classified "fake" (without labels the
    first two count any real class), ``d_updated`` the fraction of steps the classifier learned.

    Simplifications: the code repeats the generator step up to 16 times per batch until 98 % of
    the reconstructions get their class and the classifier step up to 8 times, and also requires a
    generator accuracy above 60 % before the classifier learns fakes; here one step of each, and
    the rule without that condition (with one generator step it would keep the classifier from
    ever seeing fakes early on). No gradient clipping (the code clips at norm 5). The encoder and
    classifier are the DCGAN convnets of ``layers.py`` (the code: a 2-layer MLP encoder, a similar
    3-layer convnet classifier). The default net is 3 blocks of width 32 rather than 24 of width 6
    (``--set num_blocks=24 --set base_width=6`` gives the article's). Coordinates stay in
    ``[-1, 1]``: the code's input scale 8 is folded into ``input_init_std``. A GAN with a
    coordinate-network generator learns slowly: at the smoke budget (300 steps) expect smooth
    blobs rather than digits.
    """

    config_class = CPPNConfig
    conditional = True
    loss_names = ("d_loss", "g_loss", "class_real", "class_reconstruction", "prior_real", "kl",
                  "class_accuracy", "g_accuracy", "fake_accuracy", "d_updated")

    def __init__(self, config: CPPNConfig, image_shape):
        super().__init__(config, image_shape)
        channels, size, _ = image_shape
        self.generator = CoordinateGenerator(config.latent_dim, channels, size, config)
        self.encoder = ConvEncoder(image_shape, config.conv_width, 2 * config.latent_dim, slope=0.2)
        self.discriminator = ConvEncoder(image_shape, config.conv_width, config.num_classes + 1,
                                         slope=0.2)

    def build_optimizers(self):
        c = self.config
        self.optimizers = {
            "generator": adam([*self.generator.parameters(), *self.encoder.parameters()],
                              c.learning_rate, c),
            "discriminator": adam(self.discriminator, c.discriminator_learning_rate, c),
        }
        return self.optimizers

    # --- rendering ---------------------------------------------------------------------------

    @evaluating
    @torch.no_grad()
    def render(self, z: torch.Tensor, size: int) -> torch.Tensor:
        """``G(z)`` rendered at ``size x size`` pixels: ``[B, C, size, size]`` in ``[-1, 1]``, on
        the CPU for ``z [B, latent_dim]``. One image at a time, in chunks of rows, so memory
        stays bounded at any size (a 1080 px image is ~5 chunks)."""
        if size < 1:
            raise UsageError(f"size must be at least 1 pixel, got {size}")
        z = z.to(self.device)
        rows = max(1, RENDER_CHUNK_POINTS // size)
        images = torch.empty(z.shape[0], self.image_shape[0], size, size)
        for i in range(z.shape[0]):
            for top in range(0, size, rows):
                window = slice(top, min(top + rows, size))
                coords = coordinate_grid(size, self.device, window)  # [rows, size, 3]
                pixels = self.generator.points(z[i : i + 1], coords)  # [1, rows, size, C]
                images[i, :, window] = pixels[0].permute(2, 0, 1).float().cpu()
        return images

    def sample_at(self, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples rendered at ``size`` pixels: the same ``z`` as :meth:`sample` for one
        ``generator`` seed, so ``sample_at(n, 28, g)`` is ``sample(n, g)`` at 28 px."""
        return self.render(self.randn(n, self.config.latent_dim, generator=generator), size)

    # --- encoder -----------------------------------------------------------------------------

    def _posterior(self, x: torch.Tensor) -> D.Distribution:
        # float32 even under autocast: train_step takes the KL of this posterior in full precision.
        return diagonal_gaussian(self.encoder(x).float())

    # --- training ----------------------------------------------------------------------------

    def check_labels(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if labels is None:
            return None
        return as_class_labels(labels, n, self.config.num_classes, device)

    def _real_class_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``-log C(y | .)``, or without labels ``-log sum_{k<K} C(k | .)`` ("any real class")."""
        if labels is not None:
            return F.cross_entropy(logits, labels)
        return (logits.logsumexp(1) - logits[:, :-1].logsumexp(1)).mean()

    def train_step(self, batch, step, ctx: StepContext, labels: torch.Tensor | None = None):
        """One encoder + generator update and, when the balance rule allows, one classifier update;
        ``labels`` int64 ``[B]`` or None."""
        c = self.config
        n = batch.shape[0]
        labels = self.check_labels(labels, n, batch.device)
        fake = torch.full((n,), c.num_classes, dtype=torch.long, device=batch.device)
        z_prior = torch.randn(n, c.latent_dim, device=batch.device)
        with ctx.autocast():
            posterior = self._posterior(batch)
            reconstruction = self.generator(posterior.rsample())  # [B, C, H, W]
            generated = self.generator(z_prior)
            real_logits = self.discriminator(batch).float()  # [B, K + 1]
            rec_logits = self.discriminator(reconstruction).float()
            gen_logits = self.discriminator(generated).float()
        with ctx.full_precision():
            class_real = self._real_class_loss(real_logits, labels)
            fake_loss = F.cross_entropy(rec_logits, fake) + c.prior_weight * F.cross_entropy(gen_logits, fake)
            d_loss = class_real + c.fake_weight * fake_loss
            class_reconstruction = self._real_class_loss(rec_logits, labels)
            prior_real = self._real_class_loss(gen_logits, None)
            kl = D.kl_divergence(posterior, self.prior()).mean()
            g_loss = class_reconstruction + c.prior_weight * prior_real + c.kl_weight * kl
        with torch.no_grad():
            real_accuracy = _accuracy(real_logits, labels)
            g_accuracy = _accuracy(rec_logits, labels)
            fake_accuracy = (torch.cat([rec_logits, gen_logits]).argmax(1) == c.num_classes).float().mean()
        update = classifier_update(real_accuracy, fake_accuracy) if c.balance else "all"
        classifier_loss = {"all": d_loss, "real": class_real, "none": None}[update]
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        # One forward pass; each backward reaches only its own networks' parameters.
        ctx.backward(g_loss, inputs=[*self.generator.parameters(), *self.encoder.parameters()],
                     retain_graph=classifier_loss is not None)
        ctx.step(self.optimizers["generator"])
        if classifier_loss is not None:
            ctx.backward(classifier_loss, inputs=self.discriminator.parameters())
            ctx.step(self.optimizers["discriminator"])
        return {
            "d_loss": d_loss.item(),
            "g_loss": g_loss.item(),
            "class_real": class_real.item(),
            "class_reconstruction": class_reconstruction.item(),
            "prior_real": prior_real.item(),
            "kl": kl.item(),
            "class_accuracy": real_accuracy.item(),
            "g_accuracy": g_accuracy.item(),
            "fake_accuracy": fake_accuracy.item(),
            "d_updated": float(classifier_loss is not None),
        }


def classifier_update(real_accuracy: float, fake_accuracy: float) -> Literal["all", "real", "none"]:
    """The balance rule (the code's, see :class:`CPPN`): the classifier learns its whole loss while
    it misses fakes (``fake_accuracy < 0.7``); otherwise its real-image term only, while it
    misclassifies real images (``real_accuracy < 0.6``); otherwise it rests this step."""
    if fake_accuracy < 0.7:
        return "all"
    if real_accuracy < 0.6:
        return "real"
    return "none"


def _accuracy(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Fraction of ``logits [B, K + 1]`` whose argmax is ``labels``; without labels, whose argmax
    is any real class (not the last, "fake")."""
    predicted = logits.argmax(1)
    if labels is None:
        return (predicted != logits.shape[1] - 1).float().mean()
    return (predicted == labels).float().mean()
