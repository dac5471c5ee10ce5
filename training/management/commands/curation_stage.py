"""manage.py curation_stage SUBCOMMAND: Emu's human curation stages from a terminal.

Same services as the curation pages (reviewers still decide on the web pages);
every refusal is a CommandError carrying the service's message.

    manage.py curation_stage open-generalist photos-gen --funnel-run 7
    manage.py curation_stage open-generalist photos-rate --funnel-run 7 --mode rating --keep-threshold 4
    manage.py curation_stage open-specialist photos-final --from photos-gen --target-size 2000
    manage.py curation_stage status photos-final
    manage.py curation_stage freeze photos-final --dataset photos-2k
    manage.py curation_stage export photos-final --out decisions.csv
    manage.py curation_stage train-head photos-rate --out /models/photos-head.pth
"""

import io
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core import csv_export
from training import selectors
from training.models import CurationReview, CurationRun, CurationStage
from training.services import reviews as services


class Command(BaseCommand):
    help = "Open, watch, close, freeze and export the human curation stages (generalists, then specialists)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        gen = sub.add_parser(
            "open-generalist", help="open a keep/reject (or 1-5 rating) stage over a funnel run's kept candidates"
        )
        gen.add_argument("name")
        gen.add_argument("--funnel-run", type=int, required=True, metavar="ID", help="a finished curation (funnel) run")
        gen.add_argument("--mode", choices=CurationReview.Mode.values, default=CurationReview.Mode.KEEP_REJECT)
        gen.add_argument(
            "--keep-threshold", type=int, help="rating mode: ratings at or above this are kept (default 4)"
        )
        gen.add_argument("--instructions", default="", help="default: Emu's wording for the mode")
        gen.add_argument("--lease", type=int, default=300, help="seconds a reviewer holds a candidate")

        spec = sub.add_parser("open-specialist", help="open a selection stage over what a generalist stage kept")
        spec.add_argument("name")
        spec.add_argument("--from", dest="source", required=True, metavar="GENERALIST_NAME")
        spec.add_argument(
            "--target-size", type=int, required=True, help="the final dataset's size; the stage stops there"
        )
        spec.add_argument("--instructions", default="", help="default: Emu's selection criteria")
        spec.add_argument("--lease", type=int, default=600, help="seconds a reviewer holds a candidate")

        sub.add_parser("status", help="progress: decided, kept, per reviewer, time on task").add_argument("name")
        sub.add_parser("close", help="stop handing out candidates (decisions are kept)").add_argument("name")

        freeze = sub.add_parser("freeze", help="freeze a specialist stage's selection into a curated dataset")
        freeze.add_argument("name")
        freeze.add_argument("--dataset", required=True, metavar="DATASET_NAME")
        freeze.add_argument("--description", default="")

        export = sub.add_parser("export", help="every decision of a stage as CSV")
        export.add_argument("name")
        export.add_argument("--out", metavar="PATH", help="write to this file instead of standard output")

        head = sub.add_parser("train-head", help="train an aesthetic head on a rating stage's 1-5 ratings")
        head.add_argument("name")
        head.add_argument("--clip", default="", metavar="PATH", help="default: the funnel run's CLIP model")
        head.add_argument("--clip-name", default="", help="open_clip architecture of a bare weights file")
        head.add_argument(
            "--out", default=None, metavar="PATH", help="default: NEEDLE_TRAINING_DIR/aesthetic-heads/NAME.pth"
        )

    def handle(self, *args, subcommand, **options):
        try:
            getattr(self, "do_" + subcommand.replace("-", "_"))(**options)
        except services.ReviewError as exc:
            raise CommandError(str(exc)) from None

    @staticmethod
    def _review(name) -> CurationReview:
        review = (
            CurationReview.objects.select_related("funnel_run", "source_review", "dataset").filter(name=name).first()
        )
        if review is None:
            raise CommandError(
                f"No curation stage named {name!r}; open one with: manage.py curation_stage open-generalist NAME --funnel-run ID"
            )
        return review

    # --- Subcommands ------------------------------------------------------------------------

    def do_open_generalist(self, name, funnel_run, mode, keep_threshold, instructions, lease, **_):
        if keep_threshold is not None and mode != CurationReview.Mode.RATING:
            # Silently ignoring it would let a researcher believe ratings were asked for.
            raise CommandError("--keep-threshold applies to --mode rating only.")
        run = CurationRun.objects.filter(pk=funnel_run).first()
        if run is None:
            raise CommandError(f"No curation run {funnel_run}; run the funnel with: manage.py curate funnel COLLECTION")
        review = services.open_generalist_review(
            run,
            name,
            mode=mode,
            keep_threshold=4 if keep_threshold is None else keep_threshold,
            instructions=instructions,
            lease_seconds=lease,
        )
        how = (
            f"rating 1-5, kept at {review.keep_threshold} or above"
            if review.mode == CurationReview.Mode.RATING
            else "keep or reject"
        )
        self.stdout.write(
            f"Opened the generalist stage {review.name} ({how}) over {review.decisions.count()} candidates of funnel run {run.pk}."
        )

    def do_open_specialist(self, name, source, target_size, instructions, lease, **_):
        review = services.open_specialist_review(
            self._review(source), name, target_size=target_size, instructions=instructions, lease_seconds=lease
        )
        self.stdout.write(
            f"Opened the specialist stage {review.name} over {review.decisions.count()} candidates kept by {source}; "
            f"it stops at {review.target_size} selected."
        )

    def do_status(self, name, **_):
        review = self._review(name)
        progress = selectors.review_progress(review)
        kept_word = "selected" if review.stage == CurationStage.SPECIALIST else "kept"
        kept = f"{progress.kept} of {progress.target}" if progress.target else str(progress.kept)
        lines = [
            f"{review.name}: {review.stage} stage, {review.status}"
            + (f", frozen into dataset {review.dataset.name}" if review.dataset_id else ""),
            f"  decided {progress.decided}/{progress.total} ({progress.percent}%), {kept_word} {kept}, "
            f"leased now {progress.leased}, median {_seconds(progress.median_seconds)} per candidate"
            + (" (done)" if progress.done else ""),
        ]
        for row in progress.reviewers:
            lines.append(
                f"  {row.reviewer}: decided {row.decided}, {kept_word} {row.kept}, median {_seconds(row.median_seconds)}"
            )
        self.stdout.write("\n".join(lines))

    def do_close(self, name, **_):
        review = services.close_review(self._review(name))
        self.stdout.write(f"Closed {review.name}: no more candidates are handed out. Its decisions are kept.")

    def do_freeze(self, name, dataset, description, **_):
        frozen = services.freeze_review(self._review(name), dataset, description=description)
        self.stdout.write(
            f"Froze {name} into the curated dataset {frozen.name}: {frozen.image_count} images, content hash "
            f"{frozen.content_hash}, at {frozen.path}"
        )

    def do_export(self, name, out, **_):
        review = self._review(name)
        buffer = io.StringIO()
        writer = csv_export.writer(buffer)
        writer.writerow(selectors.DECISION_EXPORT_COLUMNS)
        rows = 0
        for row in selectors.decision_export_rows(review):
            writer.writerow(row)
            rows += 1
        if not out:
            self.stdout.write(buffer.getvalue(), ending="")
            return
        try:
            Path(out).write_text(buffer.getvalue(), encoding="utf-8", newline="")
        except OSError as exc:
            raise CommandError(f"Cannot write {out}: {exc.strerror}.") from None
        self.stdout.write(f"Wrote {rows} decisions of {review.name} to {out}.")

    def do_train_head(self, name, clip, clip_name, out, **_):
        path = services.train_aesthetic_head_from_review(
            self._review(name), clip_model_path=clip, clip_model_name=clip_name, out_path=out
        )
        self.stdout.write(f"Trained an aesthetic head on {name}'s ratings: {path}")


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f} s"
