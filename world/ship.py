"""Copy trained weights into ``world/weights`` as shipped: half precision, with their training records.

``python -m world.ship --base var/world-train/base --clip var/world-train/clip``

Half precision halves the repository's share (the CLIP vocabulary's embedding table dominates); Needle loads
pipelines with an explicit dtype, so fp16 files serve fp32 inference on a CPU unchanged.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"


def _halve(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    for path in folder.rglob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}, str(path))
        del tensors
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def ship(base: Path, clip: Path, vae_record: Path | None = None) -> dict[str, int]:
    sizes = {}
    for name, source in (("base", base), ("clip", clip)):
        target = WEIGHTS / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        _halve(target)
        sizes[name] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if vae_record and vae_record.exists():
        shutil.copy(vae_record, WEIGHTS / "base" / "vae" / "training.json")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m world.ship")
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--clip", required=True, type=Path)
    parser.add_argument("--vae-record", type=Path, help="the VAE run's training.json, kept beside the shipped VAE")
    args = parser.parse_args()
    sizes = ship(args.base, args.clip, args.vae_record)
    print({name: f"{size / 1e6:.1f} MB" for name, size in sizes.items()}, f"total {sum(sizes.values()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
