"""Small random-weight diffusers pipelines, built offline from configs.

Tests, the demo and benchmarks need real text-to-image pipelines without a
model hub. These are the real diffusers classes (UNet2DConditionModel,
AutoencoderKL, CLIP text encoders) at toy sizes, saved with
``save_pretrained`` so that Needle loads them through exactly the code path a
real SD/SDXL checkpoint takes. The tokenizer is the real CLIP BPE vocabulary
(49,408 tokens) rebuilt from the file open_clip ships, so prompts tokenize as
they would for Stable Diffusion.

Nothing here imports Django.
"""

from __future__ import annotations

from pathlib import Path

from core.clip_text import clip_text_config, clip_tokenizer


def _text_encoder_config(hidden_size: int, projection_dim: int | None = None):
    return clip_text_config(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=projection_dim or hidden_size,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four levels, like SD's VAE: 8x spatial compression (64 px -> 8x8 latents).
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def _tiny_unet(**own):
    """A two-level UNet over the tiny VAE's 8x8 latents, with each pipeline's ``own`` settings (its conditioning)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        **own,
    )


def build_tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon"):
    """An SD 1.x-shaped pipeline (SD 2.x when ``prediction_type='v_prediction'``).

    ~1 M UNet parameters; weights are drawn from ``seed``, so two seeds give two
    different "models" with identical architecture.
    """
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = _tiny_unet(
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = _tiny_vae()
    text_encoder = CLIPTextModel(_text_encoder_config(32))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(seed: int = 0):
    """An SDXL-shaped pipeline: two text encoders and size/crop conditioning."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = _tiny_unet(
        cross_attention_dim=64,  # text_encoder (32) + text_encoder_2 (32), concatenated
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_encoder_config(32)),
        text_encoder_2=CLIPTextModelWithProjection(_text_encoder_config(32, projection_dim=32)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=scheduler,
    )


def save_tiny_pipeline(path: str | Path, seed: int = 0, kind: str = "sd") -> Path:
    """Build a tiny pipeline of ``kind`` ('sd', 'sd2' or 'sdxl') and save it to ``path``."""
    builders = {
        "sd": lambda: build_tiny_sd_pipeline(seed),
        "sd2": lambda: build_tiny_sd_pipeline(seed, prediction_type="v_prediction"),
        "sdxl": lambda: build_tiny_sdxl_pipeline(seed),
    }
    if kind not in builders:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose one of {sorted(builders)}")
    path = Path(path)
    builders[kind]().save_pretrained(path, safe_serialization=True)
    return path
