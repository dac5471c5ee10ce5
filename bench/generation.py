"""Images per second: Needle's generation path vs a bare diffusers loop, in one run.

Needle's path is the whole thing: a batch is created, chunk tasks go through
the broker to a real Celery worker process, which renders, encodes PNGs,
stores them content-addressed (fsynced) and records them in the database; the
clock stops when the database says the batch is complete. The baseline is a
plain loop over the same pipeline, prompts, seeds and batch size in this
process. The worker is warmed up first (pipeline loaded), as it would be in a
long-running deployment. Both run on this machine one after the other; the
baseline runs before and after Needle and its mean is used, to damp drift.

    python bench/generation.py [--images 512] [--steps 20] [--batch-size 8]

Defaults: SQLite and the filesystem broker under var/bench (set
BENCH_DATABASE_URL / CELERY_BROKER_URL for PostgreSQL / Redis).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
VAR = BASE_DIR / "var" / "bench"
os.environ["NEEDLE_VAR_DIR"] = str(VAR)
os.environ["MEDIA_ROOT"] = str(VAR / "media")
os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{VAR / 'bench.sqlite3'}")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")


def bare_loop(
    pipeline_dir: Path, prompts: list[str], seeds: list[int], steps: int, guidance: float, size: int, batch_size: int
) -> float:
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(p, s) for p in prompts for s in seeds]
    pipe(prompt=[jobs[0][0]], num_inference_steps=steps, width=size, height=size, guidance_scale=guidance)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(jobs), batch_size):
        group = jobs[i : i + batch_size]
        generators = [torch.Generator("cpu").manual_seed(s) for _, s in group]
        with torch.inference_mode():
            images = pipe(
                prompt=[p for p, _ in group],
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=size,
                height=size,
            ).images
        assert len(images) == len(group)
    return len(jobs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per measured run (rounded to whole prompts)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--chunk-size", type=int, default=64, help="images per Celery task")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery worker pool")
    args = parser.parse_args()

    shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from evalsite.workers import WorkerProcess, database_url_for
    from generation import selectors, services
    from generation.tiny_pipelines import save_tiny_pipeline

    call_command("migrate", verbosity=0)
    pipeline_dir = save_tiny_pipeline(VAR / "model", seed=0, kind="sd")
    model = services.register_model(name="bench", pipeline_path=str(pipeline_dir), steps=args.steps, guidance_scale=5.0)
    n_seeds = 8
    n_prompts = max(1, args.images // n_seeds)
    lines = "prompt\n" + "".join(f"benchmark prompt number {i} a photo of a thing\n" for i in range(n_prompts + 1))
    prompt_set, _ = services.import_prompt_set(name="bench", data=lines.encode(), filename="bench.csv")
    prompts = list(prompt_set.prompts.order_by("position").values_list("text", flat=True))
    warm_prompt, prompts = prompts[0], prompts[1:]
    seeds = list(range(n_seeds))
    size = model.default_width
    print(
        f"{len(prompts) * n_seeds} images of {size}x{size}, {args.steps} steps, batch {args.batch_size}, "
        f"chunk {args.chunk_size}, pool {args.pool}, broker {settings.CELERY_BROKER_URL.split(':')[0]}, db {connection.vendor}"
    )

    baseline_before = bare_loop(pipeline_dir, prompts, seeds, args.steps, 5.0, size, args.batch_size)
    print(f"bare diffusers loop (before): {baseline_before:8.1f} images/s")

    worker = WorkerProcess(
        queues="generation",
        database_url=database_url_for(connection.settings_dict),
        log_dir=VAR / "logs",
        pool=args.pool,
    )
    worker.start()
    try:
        # Warm-up: the worker loads the pipeline once, as in a long-running deployment.
        warm_set, _ = services.import_prompt_set(
            name="warm", data=f"prompt\n{warm_prompt}\n".encode(), filename="w.csv"
        )
        warm = services.create_batch(
            models=[model], prompt_set=warm_set, seeds=seeds, inference_batch_size=args.batch_size
        )
        services.dispatch_batch(warm)
        wait(warm, selectors, worker)

        bench_set, _ = services.import_prompt_set(
            name="measured", data=("prompt\n" + "".join(p + "\n" for p in prompts)).encode(), filename="m.csv"
        )
        started = time.time()
        batch = services.create_batch(
            models=[model],
            prompt_set=bench_set,
            seeds=seeds,
            inference_batch_size=args.batch_size,
            chunk_size=args.chunk_size,
        )
        services.dispatch_batch(batch)
        total = wait(batch, selectors, worker)
        # The worker stamps completed_at when it records the last image; polling
        # rarely keeps this process from competing with the worker for the CPU.
        batch.refresh_from_db()
        needle = total / (batch.completed_at.timestamp() - started)
    finally:
        worker.stop()
    print(f"Needle (broker -> worker -> PNG -> storage -> db): {needle:8.1f} images/s")

    baseline_after = bare_loop(pipeline_dir, prompts, seeds, args.steps, 5.0, size, args.batch_size)
    print(f"bare diffusers loop (after):  {baseline_after:8.1f} images/s")
    baseline = (baseline_before + baseline_after) / 2
    print(f"ratio Needle / bare loop: {needle / baseline:.3f}  (goal >= 0.95)")


def wait(batch, selectors, worker, timeout: float = 1800) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch.refresh_from_db()
        if batch.error:
            raise SystemExit(f"batch failed: {batch.error}")
        progress = selectors.batch_progress(batch)
        if progress.complete:
            return progress.total
        if not worker.alive:
            raise SystemExit(f"worker died:\n{worker.log()}")
        time.sleep(1.0)
    raise SystemExit(f"timed out:\n{worker.log()}")


if __name__ == "__main__":
    main()
