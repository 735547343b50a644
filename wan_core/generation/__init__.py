"""Text/image-to-video generation on top of the solvers: classifier-free guidance, Wan2.2 A14B expert
routing, TI2V first-frame conditioning and noise masks (`pipeline`), image conditioning for I2V / FLF2V
(`conditioning`), video size <-> latent shape checks (`shapes`), the official per-release defaults and
negative prompts (`defaults`), latent previews (`preview`)."""
from .defaults import SamplingDefaults, default_negative, official_defaults
from .pipeline import Conditioning, generate, seeded_noise

__all__ = ["generate", "Conditioning", "seeded_noise", "official_defaults", "default_negative", "SamplingDefaults"]
