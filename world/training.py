"""Training the world's models on its pre-training corpus: ``python -m world.training {vae,clip,base}``.

Every run is seeded and writes ``training.json`` beside its weights: the command, the seed, steps, wall time, the
loss curve and the run's own evaluation (reconstruction PSNR for the VAE, retrieval accuracy for CLIP, oracle
faithfulness and hidden appeal of samples for the base model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.clip_text import clip_tokenizer
from world import models
from world.appeal import appeal_score
from world.corpus import CORPUS_SEED_BASE, EVAL_SEED_BASE
from world.oracle import check, scene_for_seed
from world.scenes import COLOURS, COUNTS, SHAPES, render


def render_corpus(n: int, seed_base: int = CORPUS_SEED_BASE) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` scenes from ``seed_base``, rendered; cached under $WORLD_CORPUS_CACHE when that is set."""
    import os

    cache = os.environ.get("WORLD_CORPUS_CACHE")
    if cache:
        folder = Path(cache)
        for path in sorted(folder.glob(f"corpus-{seed_base}-*.npz")):
            if int(path.stem.rsplit("-", 1)[1]) >= n:
                data = np.load(path, allow_pickle=False)
                return data["images"][:n], [str(c) for c in data["captions"][:n]]
        images, captions = _render_corpus(n, seed_base)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"corpus-{seed_base}-{n}.npz", images=images, captions=np.array(captions))
        return images, captions
    return _render_corpus(n, seed_base)


def _render_corpus(n: int, seed_base: int) -> tuple[np.ndarray, list[str]]:
    images = np.empty((n, models.IMAGE_SIZE, models.IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene = scene_for_seed(seed_base + i)
        images[i] = render(scene, models.IMAGE_SIZE)
        captions.append(scene.caption())
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], as diffusers VAEs expect."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


class RunLog:
    def __init__(self, out: Path, kind: str, args: argparse.Namespace):
        self.out, self.started = out, time.monotonic()
        self.record = {
            "kind": kind,
            "command": "python -m world.training " + " ".join(sys.argv[1:]),
            "args": vars(args),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "losses": [],
        }

    def loss(self, step: int, value: float) -> None:
        self.record["losses"].append([step, round(value, 5)])
        print(f"[{time.monotonic() - self.started:7.0f}s] step {step} loss {value:.4f}", flush=True)

    def save(self, **figures) -> None:
        self.record.update(figures)
        self.record["seconds"] = round(time.monotonic() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "training.json").write_text(json.dumps(self.record, indent=1) + "\n")


def train_vae(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    images, _ = render_corpus(args.corpus)
    held_out, train = images[-256:], images[:-256]
    vae = models.build_vae()
    if args.init:
        from diffusers import AutoencoderKL

        vae.load_state_dict(AutoencoderKL.from_pretrained(args.init).state_dict())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr)
    log = RunLog(Path(args.out), "vae", args)
    rng = np.random.default_rng(args.seed)
    for step in range(1, args.steps + 1):
        x = to_tensor(train[rng.integers(len(train), size=args.batch)])
        if args.crop:
            # The VAE is convolutional: random crops teach it the same local code at a fraction of the cost.
            top, left = (int(v) for v in rng.integers(0, models.IMAGE_SIZE - args.crop + 1, size=2))
            x = x[:, :, top : top + args.crop, left : left + args.crop]
        # Constant, then a linear decay over the last third: the decay buys several dB of reconstruction.
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, 3.0 * (1.0 - step / args.steps) + 0.02)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log.loss(step, loss.item())
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(to_tensor(train[:2048])).latent_dist.mean
        scaling = float(1.0 / latents.std())
        recon = to_uint8(vae.decode(vae.encode(to_tensor(held_out)).latent_dist.mean).sample)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(args.out, safe_serialization=True)
    log.save(
        held_out_psnr_db=round(psnr(recon, held_out), 2),
        scaling_factor=scaling,
        parameters=models.count_parameters(vae),
    )
    print(f"held-out PSNR {psnr(recon, held_out):.2f} dB, scaling factor {scaling:.4f}")


def _clip_tokens(captions: list[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(captions, context_length=models.CONTEXT_LENGTH)


def clip_image_input(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(models.CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(models.CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def train_clip(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    images, captions = render_corpus(args.corpus)
    tokens = _clip_tokens(captions)
    model = models.build_clip()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    log = RunLog(Path(args.out), "clip", args)
    rng = np.random.default_rng(args.seed)
    n_train = len(images) - 512
    for step in range(1, args.steps + 1):
        idx = rng.integers(n_train, size=args.batch)
        out = model(clip_image_input(images[idx]), tokens[idx])
        img, txt, scale = out["image_features"], out["text_features"], out["logit_scale"]
        logits = scale * img @ txt.T
        # Identical captions in a batch are true positives for each other, not negatives.
        same = torch.from_numpy(
            np.array(captions, dtype=object)[idx][:, None] == np.array(captions, dtype=object)[idx][None, :]
        )
        target = same.float() / same.float().sum(1, keepdim=True)
        loss = (
            torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
        ) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            log.loss(step, loss.item())
    model.eval()
    accuracy = clip_attribute_accuracy(
        model, images[n_train:], [scene_for_seed(CORPUS_SEED_BASE + i) for i in range(n_train, len(images))]
    )
    models.save_clip(model, args.out)
    log.save(held_out_attribute_accuracy=accuracy, parameters=models.count_parameters(model))
    print("held-out zero-shot accuracy", accuracy)


@torch.no_grad()
def clip_attribute_accuracy(model, images: np.ndarray, scenes) -> dict[str, float]:
    """Zero-shot accuracy per attribute: the true caption against the same caption with one attribute changed."""
    from dataclasses import replace

    feats = model.encode_image(clip_image_input(images), normalize=True)
    variants = {
        "colour": lambda s: [replace(s, colour=c) for c in COLOURS if c != s.background],
        "shape": lambda s: [replace(s, shape=c) for c in SHAPES],
        "count": lambda s: [replace(s, count=c) for c in COUNTS],
        "background": lambda s: [replace(s, background=c) for c in COLOURS if c != s.colour],
    }
    result = {}
    for name, make in variants.items():
        hits = 0
        for feat, scene in zip(feats, scenes):
            options = make(scene)
            txt = model.encode_text(_clip_tokens([o.caption() for o in options]), normalize=True)
            hits += int(options[int((txt @ feat).argmax())].caption() == scene.caption())
        result[name] = round(hits / len(scenes), 3)
    return result


def caption_embeddings(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def train_base(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    clip = models.load_clip(args.clip)
    text_encoder = models.text_encoder_from_clip(clip)
    tokenizer = clip_tokenizer()
    images, captions = render_corpus(args.corpus)
    log = RunLog(Path(args.out), "base", args)
    with torch.no_grad():
        moments = torch.cat(
            [vae.encode(to_tensor(images[i : i + 512])).latent_dist.parameters for i in range(0, len(images), 512)]
        )
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    cond = caption_embeddings(text_encoder, tokenizer, unique + [""])
    caption_ids = torch.tensor([index[c] for c in captions])
    empty_id = len(unique)
    print(f"corpus {len(images)} images, {len(unique)} captions, latents cached", flush=True)

    unet = models.build_unet()
    if args.init:
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(args.init, subfolder="unet").state_dict())
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    scheduler = models.build_scheduler()
    alphas = scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    scaling = vae.config.scaling_factor
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else math.inf
    step = 0
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.integers(len(images), size=args.batch))
        mean, logvar = moments[idx].chunk(2, dim=1)
        latents = (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) * scaling
        ids = torch.where(torch.rand(args.batch) < 0.1, torch.full_like(caption_ids[idx], empty_id), caption_ids[idx])
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,))
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        target = a * noise - s * latents
        lr = args.lr * min(1.0, step / 300)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond[ids]).sample, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        if step % 100 == 0:
            log.loss(step, loss.item())
        if step % args.save_every == 0 or time.monotonic() > deadline:
            _save_pipeline(args, unet, ema, vae, text_encoder, tokenizer, scheduler, log, step)
        if time.monotonic() > deadline:
            break
    _save_pipeline(args, unet, ema, vae, text_encoder, tokenizer, scheduler, log, step, evaluate=True)


def _save_pipeline(args, unet, ema, vae, text_encoder, tokenizer, scheduler, log, step, evaluate=False):
    from diffusers import StableDiffusionPipeline

    live = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(ema)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(args.out, safe_serialization=True)
    figures = {"steps_done": step}
    if evaluate:
        figures["samples"] = evaluate_pipeline(pipe, n=args.eval_samples, seed=args.seed)
        print("samples", figures["samples"], flush=True)
    log.save(**figures)
    unet.load_state_dict(live)


@torch.no_grad()
def evaluate_pipeline(pipe, n: int = 64, seed: int = 0, steps: int = 25, guidance_scale: float = 3.0) -> dict:
    """Oracle faithfulness and hidden appeal of ``n`` samples for held-out captions (never used in training)."""

    captions = [scene_for_seed(EVAL_SEED_BASE + i).caption() for i in range(n)]
    checks, appeals = [], []
    for start in range(0, n, 16):
        batch = captions[start : start + 16]
        out = pipe(
            batch,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="np",
            generator=torch.Generator().manual_seed(seed + start),
            height=models.IMAGE_SIZE,
            width=models.IMAGE_SIZE,
        ).images
        for caption, image in zip(batch, out):
            pixels = (image * 255).round().astype(np.uint8)
            checks.append(check(pixels, caption))
            appeals.append(appeal_score(pixels))
    attrs = {
        a: round(float(np.mean([c[a] for c in checks if a in c])), 3)
        for a in ("background", "colour", "shape", "count", "position")
    }
    return {
        "n": n,
        "all_attributes": round(float(np.mean([all(c.values()) for c in checks])), 3),
        "attribute_accuracy": attrs,
        "mean_appeal": round(float(np.mean(appeals)), 4),
        "steps": steps,
        "guidance_scale": guidance_scale,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m world.training")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind, steps, batch, lr, corpus in (
        ("vae", 800, 32, 1e-3, 20000),
        ("clip", 1500, 128, 1e-3, 20000),
        ("base", 20000, 64, 4e-4, 40000),
    ):
        p = sub.add_parser(kind)
        p.add_argument("--out", required=True)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch", type=int, default=batch)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--corpus", type=int, default=corpus)
        p.add_argument("--seed", type=int, default=0)
        if kind == "vae":
            p.add_argument(
                "--crop", type=int, default=0, help="train on random square crops of this size (0: whole images)"
            )
        if kind in ("base", "vae"):
            p.add_argument("--init", help="continue from these weights (a VAE folder; for base, a pipeline's UNet)")
        if kind == "base":
            p.add_argument("--vae", required=True)
            p.add_argument("--clip", required=True)
            p.add_argument("--minutes", type=float, default=0, help="stop after this long (0: run every step)")
            p.add_argument("--ema", type=float, default=0.999)
            p.add_argument("--save-every", type=int, default=1000)
            p.add_argument("--eval-samples", type=int, default=96)
    args = parser.parse_args(argv)
    {"vae": train_vae, "clip": train_clip, "base": train_base}[args.kind](args)


if __name__ == "__main__":
    main()
