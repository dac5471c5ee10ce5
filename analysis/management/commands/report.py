"""manage.py report CAMPAIGN --format csv|items-csv|json|html|pdf --out PATH: a campaign's report or data, as a file.

The same files as the report page's downloads. The file is written next to
its destination and renamed into place, so a reader never sees half a report
and a failed run leaves any previous file as it was.
"""

import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from analysis import services

FORMATS = ["csv", "items-csv", "json", "html", "pdf"]


class Command(BaseCommand):
    help = "Write a campaign's report (json, html, pdf) or data (csv: one row per vote; items-csv: one per comparison) to a file."

    def add_arguments(self, parser):
        parser.add_argument("campaign", help="campaign name (or id)")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", required=True, type=Path, help="file to write; replaced atomically")
        parser.add_argument(
            "--seed",
            type=int,
            default=services.DEFAULT_SEED,
            help="bootstrap seed, Bradley–Terry intervals only (default %(default)s)",
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=services.DEFAULT_ROUNDS,
            help=f"bootstrap rounds for the Bradley–Terry intervals, {services.MIN_ROUNDS} to {services.MAX_ROUNDS} (default %(default)s)",
        )
        parser.add_argument(
            "--include-incomplete", action="store_true", help="count comparisons with fewer than k votes too"
        )

    def handle(self, *args, campaign, format, out, seed, rounds, include_incomplete, **options):
        try:
            found = services.find_campaign(campaign)
            exported = services.export(found, format, seed=seed, rounds=rounds, include_incomplete=include_incomplete)
            size = write_atomically(out, exported.content)
        except services.ReportError as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"Cannot write {out}: {exc.strerror or exc}") from None
        self.stdout.write(f"Wrote {out} ({size:,} bytes): {exported.format.name} of campaign {found.name!r}.")


def write_atomically(path: Path, content) -> int:
    """Write bytes, or an iterable of text chunks (UTF-8), to ``path`` via a temporary file and a rename; returns bytes written."""
    path = path.expanduser()
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise services.ReportError(f"The folder {directory} does not exist.")
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    size = 0
    try:
        with os.fdopen(handle, "wb") as file:
            chunks = [content] if isinstance(content, bytes) else (chunk.encode() for chunk in content)
            for chunk in chunks:
                size += file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return size
