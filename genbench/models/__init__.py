"""Model registry and the reference models (one file per family).

Adding a model: a new file here with ``@register_model("name")`` and one import line below.
"""

# Importing a model file registers it.
from genbench.models import (  # noqa: E402,F401
    acgan,
    cgan,
    cppn,
    deepsim,
    deepsim_inversion,
    gan,
    gvae,
    infogan,
    latent_optimisation,
    pix2pix,
    ppca,
    sagan,
    srgan,
    stackgan,
    unet_gan,
    vae,
    wgan,
)
from genbench.models.base import GenerativeModel, ModelConfig, StepContext
from genbench.models.registry import MODELS, get_model_class, model_names, register_model

__all__ = [
    "GenerativeModel",
    "ModelConfig",
    "StepContext",
    "MODELS",
    "get_model_class",
    "model_names",
    "register_model",
]
