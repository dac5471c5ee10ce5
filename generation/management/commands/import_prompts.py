from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from generation import services
from generation.prompt_files import FORMATS, PromptFileError


class Command(BaseCommand):
    help = "Import a prompt set from CSV, JSONL or a PartiPrompts TSV. A file with any problem imports nothing."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--name", help="default: the file name without extension")
        parser.add_argument("--format", choices=FORMATS, help="default: from the file extension")
        parser.add_argument("--description", default="")

    def handle(self, *args, **o):
        path = Path(o["path"])
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            prompt_set, parsed = services.import_prompt_set(
                name=o["name"] or path.stem,
                data=path.read_bytes(),
                filename=path.name,
                format=o["format"],
                description=o["description"],
            )
        except PromptFileError as exc:
            raise CommandError(
                "\n".join([f"{path}: rejected, nothing imported:"] + [f"  {e}" for e in exc.errors])
            ) from None
        for dup in parsed.duplicates:
            self.stderr.write(f"  {dup}")
        self.stdout.write(
            f"Imported {len(parsed.prompts)} prompts into {prompt_set.name!r} ({len(parsed.duplicates)} duplicates skipped)."
        )
