from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.polling import Waiting, wait_until
from generation import selectors, services
from generation.models import SCHEDULER_CHOICES, GenerationBatch, PromptSet, TextToImageModel


class Command(BaseCommand):
    help = (
        "Create a generation batch (models x prompt set x seeds) and queue it for Celery workers, "
        "or resume one with --resume; shows a progress bar until it is done unless --no-wait."
    )

    def add_arguments(self, parser):
        parser.add_argument("--models", nargs="+", metavar="NAME")
        parser.add_argument("--prompt-set")
        parser.add_argument("--seeds", default="0", help="e.g. '0-3, 10'")
        parser.add_argument("--name", default="")
        parser.add_argument("--steps", type=int)
        parser.add_argument("--guidance-scale", type=float)
        parser.add_argument("--width", type=int)
        parser.add_argument("--height", type=int)
        parser.add_argument("--scheduler", choices=[c for c, _ in SCHEDULER_CHOICES])
        parser.add_argument("--inference-batch-size", type=int)
        parser.add_argument("--chunk-size", type=int)
        parser.add_argument(
            "--resume", type=int, metavar="BATCH_ID", help="queue the missing images of an existing batch"
        )
        parser.add_argument(
            "--reuse",
            action="store_true",
            help="if a batch of this --name with the same models, prompts, seeds and parameters exists, resume it "
            "instead of creating another (for scripts that run again)",
        )
        parser.add_argument("--no-wait", action="store_true", help="queue and return at once")
        parser.add_argument(
            "--timeout", type=float, default=0, help="give up waiting after this many seconds (0: never)"
        )

    def handle(self, *args, **o):
        try:
            batch = self._resume(o["resume"]) if o["resume"] else self._create(o)
            sent = services.dispatch_batch(batch)
        except services.GenerationError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Batch {batch.pk}: queued {sent} chunk task(s) on the 'generation' queue.")
        if o["no_wait"]:
            return
        self._wait(batch, o["timeout"])

    def _resume(self, batch_id):
        try:
            return GenerationBatch.objects.get(pk=batch_id)
        except GenerationBatch.DoesNotExist:
            raise CommandError(f"There is no batch {batch_id}.") from None

    def _create(self, o):
        if not o["models"] or not o["prompt_set"]:
            raise CommandError("Give --models and --prompt-set (or --resume BATCH_ID).")
        by_name = {m.name: m for m in TextToImageModel.objects.filter(name__in=o["models"])}
        missing = set(o["models"]) - set(by_name)
        if missing:
            known = ", ".join(TextToImageModel.objects.values_list("name", flat=True)) or "none registered"
            raise CommandError(f"Unknown model(s): {', '.join(sorted(missing))} (known: {known}).")
        models = [by_name[name] for name in o["models"]]  # as given: the service refuses a model listed twice
        prompt_set = PromptSet.objects.filter(name=o["prompt_set"]).first()
        if prompt_set is None:
            raise CommandError(f"Unknown prompt set {o['prompt_set']!r}.")
        return services.create_batch(
            models=models,
            prompt_set=prompt_set,
            seeds=services.parse_seeds(o["seeds"]),
            parameters={
                "steps": o["steps"],
                "guidance_scale": o["guidance_scale"],
                "width": o["width"],
                "height": o["height"],
                "scheduler": o["scheduler"],
            },
            name=o["name"],
            inference_batch_size=o["inference_batch_size"],
            chunk_size=o["chunk_size"],
            reuse=o["reuse"],
        )

    def _wait(self, batch, timeout):
        progress = selectors.batch_progress(batch)
        with tqdm(total=progress.total, unit="img", desc=str(batch), file=self.stdout._out) as bar:

            def step(waiting: Waiting) -> bool:
                nonlocal progress
                batch.refresh_from_db()
                progress = selectors.batch_progress(batch)
                if progress.done != bar.n:
                    bar.update(progress.done - bar.n)
                    waiting.progressed()
                elif waiting.hint_due():
                    bar.write(
                        "No progress for 60 s. Is a worker consuming the 'generation' queue? "
                        "Start one with: celery -A evalsite worker -Q generation -c 1"
                    )
                if batch.error:
                    raise CommandError(f"Batch {batch.pk} failed: {batch.error}")
                if progress.complete:
                    # Every image is stored; the last chunk's worker may not have recorded the batch complete yet.
                    services.mark_complete_if_done(batch.pk)
                    return True
                if selectors.is_stalled(batch, progress):
                    raise CommandError(selectors.stalled_message(batch, progress))
                if waiting.timed_out():
                    raise CommandError(
                        f"Gave up after {timeout:.0f}s at {progress.done}/{progress.total}; the workers go on. "
                        f"Is a worker running? celery -A evalsite worker -Q generation"
                    )
                return False

            wait_until(step, interval=0.5, timeout=timeout, hint_after=60)
        self.stdout.write(f"Batch {batch.pk} complete: {progress.total} images.")
