"""Architectures of the world's models, and the conversion of the world CLIP's text tower into Stable Diffusion's.

* **VAE**: a diffusers ``AutoencoderKL`` with three levels (64 px -> 16x16x4 latents), 0.95 M parameters.
* **CLIP**: an open_clip ``CLIP`` (tiny ViT on 64 px, a 64-wide text transformer on CLIP's real BPE vocabulary),
  saved in open_clip's hub-export layout so the training app's ``load_clip`` reads it like any CLIP.
* **Text encoder**: transformers' ``CLIPTextModel`` holding exactly the world CLIP's text tower (``text_encoder_from_clip``),
  so the base model is conditioned on contrastively learnt text features, as Stable Diffusion is.
* **UNet**: a diffusers ``UNet2DConditionModel`` on 16x16 latents, v-prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.clip_text import CLIP_VOCAB_SIZE, clip_text_config

IMAGE_SIZE = 64
LATENT_SIZE = 16
TEXT_WIDTH = 64
CONTEXT_LENGTH = 77
CLIP_NAME = "mini-emu-clip"

CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "patch_size": 8,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": CLIP_VOCAB_SIZE,
        "width": TEXT_WIDTH,
        "heads": 2,
        "layers": 3,
        "mlp_ratio": 2.0,
    },
}
# What open_clip's image transform needs: the world renders are already 64 px RGB in [0, 1].
CLIP_PREPROCESS = {
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def build_clip():
    """The world CLIP, built from the same config open_clip reads back from the saved directory."""
    from open_clip.model import CLIP

    return CLIP(**json.loads(json.dumps(CLIP_CONFIG)), output_dict=True)


def save_clip(model, directory: str | Path) -> Path:
    """Write the CLIP in open_clip's hub-export layout (config beside safetensors weights)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": CLIP_CONFIG, "preprocess_cfg": CLIP_PREPROCESS}, indent=2) + "\n"
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "open_clip_model.safetensors"))
    return directory


def load_clip(directory: str | Path):
    from safetensors.torch import load_file

    model = build_clip()
    model.load_state_dict(load_file(str(Path(directory) / "open_clip_model.safetensors")))
    return model.eval()


def text_encoder_config():
    text = CLIP_CONFIG["text_cfg"]
    return clip_text_config(
        hidden_size=text["width"],
        intermediate_size=int(text["width"] * text["mlp_ratio"]),
        num_hidden_layers=text["layers"],
        num_attention_heads=text["heads"],
        max_position_embeddings=text["context_length"],
        projection_dim=CLIP_CONFIG["embed_dim"],
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def text_encoder_from_clip(clip_model):
    """A transformers ``CLIPTextModel`` with the world CLIP's text tower weights (exact, not an approximation)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(text_encoder_config())
    src = clip_model.state_dict()
    width = CLIP_CONFIG["text_cfg"]["width"]
    dst = {
        "text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
        "text_model.final_layer_norm.weight": src["ln_final.weight"],
        "text_model.final_layer_norm.bias": src["ln_final.bias"],
    }
    for i in range(CLIP_CONFIG["text_cfg"]["layers"]):
        s, d = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for name, chunk in zip(("q", "k", "v"), range(3)):
            dst[f"{d}self_attn.{name}_proj.weight"] = src[s + "attn.in_proj_weight"][
                chunk * width : (chunk + 1) * width
            ]
            dst[f"{d}self_attn.{name}_proj.bias"] = src[s + "attn.in_proj_bias"][chunk * width : (chunk + 1) * width]
        dst[f"{d}self_attn.out_proj.weight"] = src[s + "attn.out_proj.weight"]
        dst[f"{d}self_attn.out_proj.bias"] = src[s + "attn.out_proj.bias"]
        for hf, oc in (
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            dst[f"{d}{hf}.weight"] = src[f"{s}{oc}.weight"]
            dst[f"{d}{hf}.bias"] = src[f"{s}{oc}.bias"]
    dst = {k.removeprefix("text_model."): v for k, v in dst.items()}
    missing, unexpected = encoder.load_state_dict(dst, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"text tower conversion: missing {missing}, unexpected {unexpected}")
    return encoder.eval()


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        # Text enters at the 4x4 level and in the middle block only: on two CPU cores, attention at 16x16 would
        # cost five times the step time, and the world's captions (colour, shape, count, position) are global.
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=32,
        norm_num_groups=16,
    )


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
