from django.core.management.base import BaseCommand, CommandError

from generation import services
from generation.models import SCHEDULER_CHOICES


class Command(BaseCommand):
    help = "Register a text-to-image model from a local diffusers pipeline directory."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("pipeline_path")
        parser.add_argument("--steps", type=int)
        parser.add_argument("--guidance-scale", type=float)
        parser.add_argument("--width", type=int, help="default: the pipeline's native resolution")
        parser.add_argument("--height", type=int, help="default: the pipeline's native resolution")
        parser.add_argument("--scheduler", default="default", choices=[c for c, _ in SCHEDULER_CHOICES])
        parser.add_argument("--description", default="")

    def handle(self, *args, **o):
        try:
            model = services.register_model(
                name=o["name"],
                pipeline_path=o["pipeline_path"],
                steps=o["steps"],
                guidance_scale=o["guidance_scale"],
                width=o["width"],
                height=o["height"],
                scheduler=o["scheduler"],
                description=o["description"],
            )
        except services.ModelRegistrationError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Registered {model.name}: {model.pipeline_class}, {model.weights_bytes / 1e6:.1f} MB, "
            f"fingerprint {model.weights_fingerprint[:16]}, defaults {model.default_parameters}"
        )
