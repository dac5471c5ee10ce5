"""The world's model builders: the CLIP text tower becomes Stable Diffusion's text encoder exactly."""

import torch

from core.clip_text import clip_tokenizer
from world import models


def test_the_sd_text_encoder_computes_exactly_what_the_world_clips_text_tower_computes():
    torch.manual_seed(0)
    clip = models.build_clip().eval()
    encoder = models.text_encoder_from_clip(clip)
    captions = ["a red circle on a blue background", "three green triangles at the top on a purple background"]
    ids = clip_tokenizer()(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = clip.encode_text(ids)  # open_clip: pooled at the end-of-text token, projected
        out = encoder(ids)
        pooled = out.pooler_output @ clip.text_projection
    assert torch.allclose(pooled, expected, atol=1e-5), (pooled - expected).abs().max()
    assert out.last_hidden_state.shape == (2, 77, models.TEXT_WIDTH)


def test_the_base_pipeline_parts_have_the_documented_shapes():
    unet, vae = models.build_unet(), models.build_vae()
    assert unet.config.cross_attention_dim == models.TEXT_WIDTH and unet.config.sample_size == models.LATENT_SIZE
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, models.IMAGE_SIZE, models.IMAGE_SIZE)).latent_dist.mean
    assert latents.shape == (1, 4, models.LATENT_SIZE, models.LATENT_SIZE)
    assert models.build_scheduler().config.prediction_type == "v_prediction"
