"""manage.py curate SUBCOMMAND: the automatic curation funnel from a terminal.

Same validation and services as the curation pages; every refusal is a CommandError carrying the service's message.

    manage.py curate import photos-2024 /data/candidates/photos-2024
    manage.py curate funnel photos-2024 --clip /models/vit-l-14 --aesthetic-head /models/sac+logos+ava1-l14.pth --wait
    manage.py curate funnel photos-2024 --stages stages.json --clip /models/ViT-B-32.pt --clip-name ViT-B-32
    manage.py curate report 7 --format csv --out curation-7.csv
"""

import io
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core.polling import Waiting, wait_until
from training import selectors, services
from training.models import CandidateCollection, CurationRun

WORKER_HINT = "Is a worker consuming the 'training' queue? Start one with: celery -A evalsite worker -Q training -c 1"


class Command(BaseCommand):
    help = "Import candidate collections, run the automatic curation funnel on a worker, and export its report."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        imp = sub.add_parser(
            "import", help="scan a folder of images with captions.csv/.jsonl into a candidate collection"
        )
        imp.add_argument("name")
        imp.add_argument("folder")

        funnel = sub.add_parser(
            "funnel", help="create a funnel run over a collection and queue it on the 'training' queue"
        )
        funnel.add_argument("collection", help="collection name")
        funnel.add_argument(
            "--stages",
            metavar="JSON_FILE",
            help='stage list, e.g. [{"kind": "ResolutionStage", "min_side": 512}]; default: all of Emu\'s filters',
        )
        funnel.add_argument("--clip", default="", metavar="PATH", help="local open_clip export folder or weights file")
        funnel.add_argument(
            "--clip-name", default="", help="open_clip architecture of a bare weights file, e.g. ViT-L-14"
        )
        funnel.add_argument("--aesthetic-head", default="", metavar="PATH", help="LAION-format aesthetic head")
        funnel.add_argument("--wait", action="store_true", help="wait until the run ends and print its stages")
        funnel.add_argument(
            "--timeout", type=float, default=0, help="with --wait: give up waiting after this many seconds"
        )

        report = sub.add_parser("report", help="a run's report and outcomes")
        report.add_argument("run_id", type=int)
        report.add_argument("--format", choices=("json", "csv"), default="json")
        report.add_argument("--out", metavar="PATH", help="write to this file instead of standard output")

    def handle(self, *args, subcommand, **options):
        try:
            getattr(self, f"do_{subcommand}")(**options)
        except services.TrainingError as exc:
            raise CommandError(str(exc)) from None

    def do_import(self, name, folder, **_):
        collection = services.import_candidate_collection(name, folder)
        self.stdout.write(
            f"Imported {collection.candidate_count} candidates into {collection.name} from {collection.path}."
        )
        for problem in collection.problems:
            self.stdout.write(f"  problem: {problem}")

    def do_funnel(self, collection, stages, clip, clip_name, aesthetic_head, wait, timeout, **_):
        try:
            chosen = CandidateCollection.objects.get(name=collection)
        except CandidateCollection.DoesNotExist:
            raise CommandError(
                f"No candidate collection named {collection!r}; import one with: manage.py curate import NAME FOLDER"
            ) from None
        stage_config = None
        if stages:
            try:
                stage_config = json.loads(Path(stages).read_text(encoding="utf-8"))
            except OSError as exc:
                raise CommandError(f"Cannot read the stages file {stages}: {exc.strerror}.") from None
            except ValueError as exc:
                raise CommandError(f"The stages file {stages} is not valid JSON ({exc}).") from None
        run = services.create_curation_run(
            chosen, stage_config, clip_model_path=clip, clip_model_name=clip_name, aesthetic_head_path=aesthetic_head
        )
        run = services.start_curation_run(run)
        self.stdout.write(f"Queued curation run {run.pk} of {chosen.name} ({chosen.candidate_count} candidates).")
        if wait:
            self._wait(run, timeout)

    def _wait(self, run, timeout):
        def step(waiting: Waiting) -> bool:
            run.refresh_from_db()
            if run.status in (CurationRun.Status.FINISHED, CurationRun.Status.FAILED):
                return True
            if waiting.timed_out():
                raise CommandError(f"Curation run {run.pk} is still {run.status} after {timeout:g} s. {WORKER_HINT}")
            if waiting.hint_due(when=run.status == CurationRun.Status.QUEUED):  # nothing counts as progress here
                self.stderr.write(f"Still queued after a minute. {WORKER_HINT}")
            return False

        wait_until(step, interval=0.2, timeout=timeout, hint_after=60)
        if run.status == CurationRun.Status.FAILED:
            raise CommandError(f"Curation run {run.pk} failed: {run.error}")
        for stage in selectors.stage_rows(run):
            skipped = f" (skipped: {stage['skipped_reason']})" if stage["skipped_reason"] else ""
            self.stdout.write(f"  {stage['name']}: {stage['count_in']} -> {stage['count_out']}{skipped}")
        self.stdout.write(f"Curation run {run.pk} finished: {run.count_kept} of {run.count_in} kept.")

    def do_report(self, run_id, format, out, **_):
        try:
            run = CurationRun.objects.select_related("collection").get(pk=run_id)
        except CurationRun.DoesNotExist:
            raise CommandError(f"No curation run {run_id}.") from None
        if format == "csv":
            buffer = io.StringIO()
            selectors.write_outcomes_csv(run, buffer)
            text = buffer.getvalue()
        else:
            text = json.dumps(selectors.curation_run_summary(run), indent=2, ensure_ascii=False) + "\n"
        if out:
            try:
                Path(out).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"Cannot write {out}: {exc.strerror}.") from None
            self.stdout.write(f"Wrote the {format.upper()} report of curation run {run.pk} to {out}.")
        else:
            self.stdout.write(text, ending="")
