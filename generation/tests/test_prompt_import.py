from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from generation import services
from generation.models import Prompt, PromptSet
from generation.prompt_files import PromptFileError

pytestmark = pytest.mark.django_db

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo_prompts.tsv"


def test_demo_prompt_set_imports_with_categories():
    prompt_set, parsed = services.import_prompt_set(name="demo", data=DEMO.read_bytes(), filename=DEMO.name)
    prompts = list(prompt_set.prompts.all())
    assert len(prompts) == len(parsed.prompts) == 16
    assert [p.position for p in prompts] == list(range(16))
    assert prompts[3].challenge == "Quantity" and prompts[3].note == "Counting test"
    assert prompt_set.source_sha256 and prompt_set.source_filename == "demo_prompts.tsv"


def test_a_file_with_one_bad_line_imports_nothing():
    data = b"prompt\n" + b"".join(f"prompt {i}\n".encode() for i in range(100)) + b'""\n'
    with pytest.raises(PromptFileError, match="line 102: empty prompt"):
        services.import_prompt_set(name="bad", data=data, filename="bad.csv")
    assert not PromptSet.objects.exists() and not Prompt.objects.exists()


def test_existing_name_is_refused_and_the_first_set_is_untouched():
    services.import_prompt_set(name="s", data=b"prompt\na\n", filename="a.csv")
    with pytest.raises(PromptFileError, match="already exists"):
        services.import_prompt_set(name="s", data=b"prompt\nb\nc\n", filename="b.csv")
    assert list(Prompt.objects.values_list("text", flat=True)) == ["a"]


def test_command_prints_every_error_and_imports_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b'prompt\nok\n""\n""\n')
    with pytest.raises(CommandError) as info:
        call_command("import_prompts", str(bad))
    assert "line 3: empty prompt" in str(info.value) and "line 4: empty prompt" in str(info.value)
    assert not PromptSet.objects.exists()
    with pytest.raises(CommandError, match="is not a file"):
        call_command("import_prompts", str(tmp_path / "missing.csv"))


def test_command_reports_duplicates(tmp_path, capsys):
    f = tmp_path / "dups.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": "a"}\n')
    call_command("import_prompts", str(f), "--name", "d")
    captured = capsys.readouterr()
    assert "Imported 1 prompts" in captured.out and "line 2: duplicate of line 1" in captured.err
