import pytest

from generation.prompt_files import PromptFileError, parse_prompt_file


def errors_of(data: bytes, filename: str, **kw) -> list[str]:
    with pytest.raises(PromptFileError) as info:
        parse_prompt_file(data, filename, **kw)
    return info.value.errors


def test_partiprompts_tsv_keeps_category_and_challenge_and_quotes():
    data = b'Prompt\tCategory\tChallenge\tNote\n"Hello" on a sign\tArtifacts\tWriting & Symbols\tquoted\na cat\tAnimals\tBasic\t\n'
    parsed = parse_prompt_file(data, "PartiPrompts.tsv")
    assert [(p.text, p.category, p.challenge, p.note) for p in parsed.prompts] == [
        ('"Hello" on a sign', "Artifacts", "Writing & Symbols", "quoted"),
        ("a cat", "Animals", "Basic", ""),
    ]


def test_csv_with_bom_quoted_commas_and_multiline_prompt():
    data = '\ufeffprompt,category\n"a cat, sitting",Animals\n"two\nlines",Misc\n'.encode()
    parsed = parse_prompt_file(data, "p.csv")
    assert [p.text for p in parsed.prompts] == ["a cat, sitting", "two\nlines"]
    assert [p.line for p in parsed.prompts] == [2, 3]


def test_jsonl_accepts_partiprompts_keys_in_any_case():
    data = b'{"Prompt": "a dog", "Category": "Animals"}\n\n{"prompt": "a boat", "challenge": "Basic"}\n'
    parsed = parse_prompt_file(data, "p.jsonl")
    assert [(p.text, p.category, p.challenge) for p in parsed.prompts] == [
        ("a dog", "Animals", ""),
        ("a boat", "", "Basic"),
    ]


def test_duplicates_are_reported_with_both_line_numbers_and_skipped():
    parsed = parse_prompt_file(b"prompt\na cat\na dog\n a cat \n", "p.csv")
    assert [p.text for p in parsed.prompts] == ["a cat", "a dog"]
    assert [(d.line, d.first_line) for d in parsed.duplicates] == [(4, 2)]


def test_wrong_encoding_names_the_line_and_byte():
    data = "prompt\na cat\nun café\n".encode("latin-1")
    assert errors_of(data, "p.csv") == ["line 3: not valid UTF-8 (byte 0xe9 at column 7); re-save the file as UTF-8"]


def test_utf16_file_is_rejected_as_binary():
    errors = errors_of("prompt\na cat\n".encode("utf-16"), "p.csv")
    assert "NUL byte" in errors[0]


def test_missing_prompt_column_lists_the_columns_found():
    assert errors_of(b"text,category\na cat,Animals\n", "p.csv") == [
        "line 1: missing required column 'prompt' (found: 'text', 'category')"
    ]


def test_every_empty_prompt_is_reported_with_its_line():
    errors = errors_of(b'prompt,category\na cat,x\n ,y\nok,z\n"",w\n', "p.csv")
    assert errors == ["line 3: empty prompt", "line 5: empty prompt"]


def test_oversized_file_is_rejected_before_parsing():
    assert "limit is 100" in errors_of(b"prompt\n" + b"a cat\n" * 50, "p.csv", max_bytes=100)[0]


def test_overlong_prompt_is_rejected():
    assert errors_of(b"prompt\n" + b"x" * 30 + b"\n", "p.csv", max_chars=20) == [
        "line 2: the prompt is 30 characters long; the limit is 20 (NEEDLE_PROMPT_MAX_CHARS): shorten it, or split it "
        "into several prompts"
    ]


def test_bad_json_lines_are_all_reported():
    errors = errors_of(b'{"prompt": "ok"}\n{"prompt": \n[1, 2]\n{"prompt": 3}\n{"text": "x"}\n', "p.jsonl")
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 4", "line 5"]


def test_rows_with_too_many_fields_are_errors():
    assert errors_of(b"prompt,category\na,b,c\n", "p.csv") == ["line 2: 3 fields but the header has 2"]


def test_unknown_extension_asks_for_a_format():
    assert "name it .csv, .tsv or .jsonl" in errors_of(b"prompt\na\n", "prompts.xlsx")[0]
    assert [p.text for p in parse_prompt_file(b"prompt\na\n", "prompts.txt", format="csv").prompts] == ["a"]


def test_file_without_prompts_is_rejected():
    assert errors_of(b"prompt\n\n", "p.csv") == ["the file holds no prompts"]
    assert errors_of(b"", "p.csv") == ["the file holds no prompts"]
