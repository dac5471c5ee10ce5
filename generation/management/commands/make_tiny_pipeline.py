from django.core.management.base import BaseCommand

from generation.tiny_pipelines import save_tiny_pipeline


class Command(BaseCommand):
    help = "Write a tiny random-weight diffusers pipeline (SD, SD2 or SDXL shaped) for demos and tests; no download."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--seed", type=int, default=0, help="weights seed: different seeds, different models")
        parser.add_argument("--kind", choices=["sd", "sd2", "sdxl"], default="sd")

    def handle(self, *args, **o):
        path = save_tiny_pipeline(o["path"], seed=o["seed"], kind=o["kind"])
        self.stdout.write(f"Wrote a tiny {o['kind']} pipeline to {path}")
