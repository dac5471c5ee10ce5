"""Parsing prompt files: CSV, TSV (the PartiPrompts format) and JSONL.

Parsing is all-or-nothing: every problem in the file is collected with its
line number, and the caller imports nothing unless the list is empty. No
Django here, so notebooks can validate a file before uploading it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import PurePath

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
OPTIONAL_COLUMNS = ("category", "challenge", "note")
MAX_REPORTED_ERRORS = 50


@dataclass(frozen=True)
class ParsedPrompt:
    line: int
    text: str
    category: str = ""
    challenge: str = ""
    note: str = ""


@dataclass(frozen=True)
class Duplicate:
    line: int
    first_line: int
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: duplicate of line {self.first_line}, skipped: {self.text[:60]!r}"


@dataclass
class ParsedPromptFile:
    prompts: list[ParsedPrompt] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)


class PromptFileError(ValueError):
    """The file cannot be imported; ``errors`` lists every problem, line-numbered; ``field`` is the input they are
    about ("file", or "name" for the prompt set's name)."""

    def __init__(self, errors: list[str], *, field: str = "file"):
        self.errors = errors
        self.field = field
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        super().__init__(f"prompt file rejected, nothing imported: {text}")


def detect_format(filename: str, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise PromptFileError([f"unknown format {explicit!r}; use one of {', '.join(FORMATS)}"])
        return explicit
    suffix = PurePath(filename).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise PromptFileError(
            [
                f"cannot tell the format of {filename!r} from its extension; name it .csv, .tsv or .jsonl, or give the format"
            ]
        )
    return _EXTENSIONS[suffix]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PromptFileError(
            [
                f"line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); re-save the file as UTF-8"
            ]
        ) from None


def _rows_from_delimited(text: str, delimiter: str, errors: list[str]):
    # TSV (PartiPrompts) is unquoted: a prompt may start with a quote mark.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # The csv module refuses fields over 131,072 characters with a message about its own limit; let long prompts
    # through to the length check below, which names the line, Needle's limit and the fix.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        errors.append(f"line 1: malformed header ({exc})")
        return
    columns = [h.strip().lower() for h in header]
    if "prompt" not in columns:
        found = ", ".join(repr(h) for h in header) or "none"
        errors.append(f"line 1: missing required column 'prompt' (found: {found})")
        return
    wanted = {name: columns.index(name) for name in ("prompt", *OPTIONAL_COLUMNS) if name in columns}
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.append(f"line {start_line}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})")
            return
        if not row:  # a blank line; a row of empty cells is an empty prompt
            continue
        if len(row) > len(header):
            errors.append(f"line {start_line}: {len(row)} fields but the header has {len(header)}")
            continue
        values = {name: (row[i] if i < len(row) else "") for name, i in wanted.items()}
        yield start_line, values


def _rows_from_jsonl(text: str, errors: list[str]):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            errors.append(f'line {number}: expected a JSON object with a "prompt" key')
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        if "prompt" not in lowered:
            errors.append(f'line {number}: no "prompt" key')
            continue
        values = {}
        for name in ("prompt", *OPTIONAL_COLUMNS):
            value = lowered.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                errors.append(f'line {number}: "{name}" must be a string, not {type(value).__name__}')
                break
            values[name] = value
        else:
            yield number, values


def parse_prompt_file(
    data: bytes, filename: str, *, format: str | None = None, max_bytes: int = 10 * 1024 * 1024, max_chars: int = 2000
) -> ParsedPromptFile:
    """Parse a prompt file; raise PromptFileError with every problem, or return the prompts."""
    fmt = detect_format(filename, format)
    if len(data) > max_bytes:
        raise PromptFileError(
            [f"the file is {len(data):,} bytes; the limit is {max_bytes:,} (NEEDLE_PROMPT_FILE_MAX_BYTES)"]
        )
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise PromptFileError([f"line {line}: NUL byte; this looks like a binary file or UTF-16 text, not UTF-8"])
    text = _decode(data)

    errors: list[str] = []
    rows = (
        _rows_from_jsonl(text, errors)
        if fmt == "jsonl"
        else _rows_from_delimited(text, "," if fmt == "csv" else "\t", errors)
    )
    result = ParsedPromptFile()
    first_seen: dict[str, int] = {}
    for line, values in rows:
        prompt = values["prompt"].strip()
        if not prompt:
            errors.append(f"line {line}: empty prompt")
            continue
        if len(prompt) > max_chars:
            errors.append(
                f"line {line}: the prompt is {len(prompt):,} characters long; the limit is {max_chars:,} "
                "(NEEDLE_PROMPT_MAX_CHARS): shorten it, or split it into several prompts"
            )
            continue
        if prompt in first_seen:
            result.duplicates.append(Duplicate(line, first_seen[prompt], prompt))
            continue
        first_seen[prompt] = line
        result.prompts.append(ParsedPrompt(line, prompt, *(values.get(name, "").strip() for name in OPTIONAL_COLUMNS)))
    if not errors and not result.prompts:
        errors.append("the file holds no prompts")
    if errors:
        raise PromptFileError(errors)
    return result
