from django.core.management.base import BaseCommand, CommandError

from generation import services


class Command(BaseCommand):
    help = (
        "Delete the half-written image files (.tmp-*.part) that workers killed mid-write leave beside the images. "
        "Images themselves are never touched; safe while workers run."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=float,
            default=3600,
            metavar="SECONDS",
            help="only files untouched for this long (default 3600; at least 60)",
        )
        parser.add_argument("--dry-run", action="store_true", help="list them, delete nothing")

    def handle(self, *args, older_than, dry_run, **options):
        try:
            paths = (services.stale_partial_images if dry_run else services.remove_stale_partial_images)(older_than)
        except services.BatchError as exc:
            raise CommandError(str(exc)) from None
        for path in paths:
            self.stdout.write(path)
        verb = "would remove" if dry_run else "removed"
        self.stdout.write(f"{verb} {len(paths)} half-written file(s)")
