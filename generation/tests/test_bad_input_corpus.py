"""The generation app's part of the bad-input corpus (evalsite/bad_input.py): registering models, importing prompt
sets and creating batches, through the commands, the admin pages, file uploads and the services.

Each input must be refused with a message that says what to fix, never a traceback, and leave no row or file behind.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from evalsite.bad_input import check, from_call, from_command, from_form_page, record_only, snapshot
from generation import services
from generation.models import BatchModel, GeneratedImage, GenerationBatch, Prompt, PromptSet, TextToImageModel

pytestmark = pytest.mark.django_db


def state():
    return snapshot(
        TextToImageModel,
        PromptSet,
        Prompt,
        GenerationBatch,
        BatchModel,
        GeneratedImage,
        dirs=[settings.MEDIA_ROOT / "images"],
    )


@pytest.fixture
def admin_client(client):
    client.force_login(get_user_model().objects.create_superuser("admin", "admin@example.org", "pw-long-enough-1"))
    return client


# --- Broken pipeline directories ------------------------------------------------------------------------------------

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _edit_index(path, **changes):
    index = json.loads((path / "model_index.json").read_text())
    index.update(changes)
    (path / "model_index.json").write_text(json.dumps(index))


def _rewrite_weights(path, make):
    file = path / UNET_WEIGHTS
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    file.write_bytes(make(data, length, header))


def _tensor_past_the_end(data, length, header):
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, len(data) * 10]
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data[8 + length :]


BREAKAGES = {
    "class name is a list": lambda p: _edit_index(p, _class_name=["StableDiffusionPipeline"]),
    "class name is an object": lambda p: _edit_index(p, _class_name={"name": "StableDiffusionPipeline"}),
    "class name is null": lambda p: _edit_index(p, _class_name=None),
    "model index is a JSON list": lambda p: (p / "model_index.json").write_text("[1, 2]"),
    "model index is cut off": lambda p: (p / "model_index.json").write_text('{"_class_name": '),
    "a component spec is a bare string": lambda p: _edit_index(p, unet="UNet2DConditionModel"),
    "an image-to-image pipeline": lambda p: _edit_index(p, _class_name="StableDiffusionImg2ImgPipeline"),
    "the unet folder is missing": lambda p: shutil.rmtree(p / "unet"),
    "weights truncated": lambda p: (p / UNET_WEIGHTS).write_bytes((p / UNET_WEIGHTS).read_bytes()[:2000]),
    "weights file empty": lambda p: (p / UNET_WEIGHTS).write_bytes(b""),
    "weights header length past the end": lambda p: _rewrite_weights(
        p, lambda d, n, h: struct.pack("<Q", 10**12) + d[8:]
    ),
    "weights header not JSON": lambda p: _rewrite_weights(p, lambda d, n, h: d[:8] + b"\xff" * n + d[8 + n :]),
    "weights header a JSON list": lambda p: _rewrite_weights(
        p, lambda d, n, h: struct.pack("<Q", 7) + b"[1,2,3]" + d[8 + n :]
    ),
    "weights tensor past the end": lambda p: _rewrite_weights(p, _tensor_past_the_end),
}
WEIGHTS_SAY = ["diffusion_pytorch_model.safetensors", "again"]
BREAKAGE_SAYS = {
    "class name is a list": ["_class_name", "model_index.json", "StableDiffusionPipeline"],
    "class name is an object": ["_class_name", "model_index.json"],
    "class name is null": ["_class_name", "model_index.json"],
    "model index is a JSON list": ["model_index.json", "object"],
    "model index is cut off": ["model_index.json", "not valid"],
    "a component spec is a bare string": ["model_index.json", "unet", r"\[library, class\]"],
    "an image-to-image pipeline": ["not a text-to-image pipeline"],
    "the unet folder is missing": ["unet/ is missing"],
    "weights truncated": WEIGHTS_SAY,
    "weights file empty": WEIGHTS_SAY,
    "weights header length past the end": WEIGHTS_SAY,
    "weights header not JSON": WEIGHTS_SAY,
    "weights header a JSON list": WEIGHTS_SAY,
    "weights tensor past the end": WEIGHTS_SAY,
}


@pytest.fixture
def broken_pipeline(tiny_pipeline_dir, tmp_path):
    def make(breakage: str):
        path = shutil.copytree(tiny_pipeline_dir("sd", 0), tmp_path / "broken")
        BREAKAGES[breakage](path)
        return path

    return make


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_register_command_refuses_a_broken_pipeline_directory(breakage, broken_pipeline):
    path = broken_pipeline(breakage)
    before = state()
    answer = from_command("register_model", "new-model", str(path))
    check(f"register_model: {breakage}", "command", answer, says=BREAKAGE_SAYS[breakage], before=before, after=state())


@pytest.mark.parametrize(
    "breakage",
    ["class name is a list", "weights truncated", "weights tensor past the end", "a component spec is a bare string"],
)
def test_admin_refuses_a_broken_pipeline_directory_under_its_field(breakage, broken_pipeline, admin_client):
    path = broken_pipeline(breakage)
    before = state()
    data = {"name": "new-model", "pipeline_path": str(path), "steps": 30, "guidance_scale": 7.5, "scheduler": "default"}
    answer = from_form_page(lambda: admin_client.post(reverse("admin:generation_texttoimagemodel_add"), data))
    check(
        f"admin register: {breakage}",
        "admin",
        answer,
        says=BREAKAGE_SAYS[breakage],
        field="pipeline_path",
        before=before,
        after=state(),
    )


REGISTER_OPTIONS = [
    ("guidance scale NaN", ["--guidance-scale", "nan"], ["guidance scale", "0", "50"]),
    ("guidance scale infinite", ["--guidance-scale", "inf"], ["guidance scale", "0", "50"]),
    ("guidance scale negative", ["--guidance-scale", "-1"], ["guidance scale", "0", "50"]),
    ("guidance scale 51", ["--guidance-scale", "51"], ["guidance scale", "50"]),
    ("steps 0", ["--steps", "0"], ["steps", "1", "1000"]),
    ("steps a million", ["--steps", "1000000"], ["steps", "1000"]),
    ("steps negative", ["--steps", "-3"], ["steps", "1", "1000"]),
    ("width 0", ["--width", "0"], ["width", "multiple of 8", "leave it out"]),
    ("width 65536", ["--width", "65536"], ["width", "4096"]),
    ("width 12", ["--width", "12"], ["width", "multiple of 8"]),
    ("height negative", ["--height", "-8"], ["height", "multiple of 8"]),
    ("scheduler unknown", ["--scheduler", "fancy"], ["scheduler", "invalid choice", "ddim"]),
]


@pytest.mark.parametrize("case,options,says", REGISTER_OPTIONS, ids=[c[0] for c in REGISTER_OPTIONS])
def test_register_command_refuses_bad_defaults(case, options, says, tiny_pipeline_dir):
    before = state()
    answer = from_command("register_model", "new-model", str(tiny_pipeline_dir("sd", 0)), *options)
    check(f"register_model: {case}", "command", answer, says=says, before=before, after=state())


@pytest.mark.skipif(record_only(), reason="measuring unfixed code")
def test_register_command_reports_nan_guidance_as_such_not_as_a_taken_name(tiny_pipeline_dir):
    answer = from_command("register_model", "nan-model", str(tiny_pipeline_dir("sd", 0)), "--guidance-scale", "nan")
    assert answer.kind == "refused" and "already exists" not in answer.message


REGISTER_NAMES = [
    ("name with a space", "my model", ["name", "letters"]),
    ("name empty", "", ["name"]),
    ("name too long", "m" * 150, ["name", "100 characters"]),
    ("name taken", "base", ["already exists", "another name"]),
]


@pytest.mark.parametrize("case,name,says", REGISTER_NAMES, ids=[c[0] for c in REGISTER_NAMES])
def test_register_command_refuses_bad_names(case, name, says, tiny_pipeline_dir, two_models):
    before = state()
    answer = from_command("register_model", name, str(tiny_pipeline_dir("sd", 0)))
    check(f"register_model: {case}", "command", answer, says=says, before=before, after=state())


def test_register_command_refuses_paths_that_are_not_pipelines(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    cases = [
        ("path missing", str(tmp_path / "nowhere"), ["does not exist"]),
        ("path is a file", str(tmp_path / "weights.safetensors"), ["is a file", "from_single_file"]),
        ("folder without model_index.json", str(tmp_path / "empty"), ["model_index.json"]),
        ("path empty", "", ["pipeline", "directory"]),
    ]
    for case, path, says in cases:
        before = state()
        answer = from_command("register_model", "new-model", path)
        check(f"register_model: {case}", "command", answer, says=says, before=before, after=state())


ADMIN_REGISTER_FIELDS = [
    ("name not a slug", {"name": "my model"}, "name", ["letters"]),
    ("guidance scale NaN", {"guidance_scale": "nan"}, "guidance_scale", ["number"]),
    ("width 12", {"width": "12"}, "width", ["multiple of 8"]),
    ("width 65536", {"width": "65536"}, "width", ["4096"]),
    ("steps 0", {"steps": "0"}, "steps", ["1"]),
    ("path empty", {"pipeline_path": ""}, "pipeline_path", ["required"]),
]


@pytest.mark.parametrize("case,changes,field,says", ADMIN_REGISTER_FIELDS, ids=[c[0] for c in ADMIN_REGISTER_FIELDS])
def test_admin_register_shows_each_error_under_its_field(case, changes, field, says, tiny_pipeline_dir, admin_client):
    data = {
        "name": "new-model",
        "pipeline_path": str(tiny_pipeline_dir("sd", 0)),
        "steps": 30,
        "guidance_scale": 7.5,
        "scheduler": "default",
        **changes,
    }
    before = state()
    answer = from_form_page(lambda: admin_client.post(reverse("admin:generation_texttoimagemodel_add"), data))
    check(f"admin register: {case}", "admin", answer, says=says, field=field, before=before, after=state())


def test_register_service_refuses_bad_values(tiny_pipeline_dir):
    path = str(tiny_pipeline_dir("sd", 0))
    cases = [
        ("scheduler unknown", {"scheduler": "fancy"}, ["scheduler", "ddim"]),
        ("steps a fraction", {"steps": 2.5}, ["steps", "whole number"]),
        ("guidance scale a string", {"guidance_scale": "seven"}, ["guidance scale", "number"]),
        ("width a bool", {"width": True}, ["width", "whole number"]),
    ]
    for i, (case, changes, says) in enumerate(cases):
        before = state()
        answer = from_call(
            lambda: services.register_model(name=f"new-model-{i}", pipeline_path=path, **changes),
            services.GenerationError,
        )
        check(f"register service: {case}", "service", answer, says=says, before=before, after=state())


# --- generate ----------------------------------------------------------------------------------------------------------

GENERATE_CASES = [
    ("the same model twice", ["--models", "base", "base"], ["base", "twice", "once"]),
    ("guidance scale NaN", ["--guidance-scale", "nan"], ["guidance scale", "0", "50"]),
    ("guidance scale infinite", ["--guidance-scale", "inf"], ["guidance scale", "0", "50"]),
    ("guidance scale negative", ["--guidance-scale", "-1"], ["guidance scale", "0", "50"]),
    ("width 65536", ["--width", "65536"], ["width", "4096"]),
    ("width 0", ["--width", "0"], ["width", "multiple of 8"]),
    ("width 12", ["--width", "12"], ["width", "multiple of 8"]),
    ("height 4", ["--height", "4"], ["height", "multiple of 8"]),
    ("a million steps", ["--steps", "1000000"], ["steps", "1000"]),
    ("steps 0", ["--steps", "0"], ["steps", "1"]),
    ("inference batch size 0", ["--inference-batch-size", "0"], ["inference batch size", "1", "256"]),
    ("inference batch size negative", ["--inference-batch-size", "-4"], ["inference batch size", "1", "256"]),
    ("inference batch size 100000", ["--inference-batch-size", "100000"], ["inference batch size", "256"]),
    ("chunk size 0", ["--chunk-size", "0"], ["chunk size", "1"]),
    ("chunk size negative", ["--chunk-size", "-1"], ["chunk size", "1"]),
    ("seeds backwards", ["--seeds", "5-1"], ["5-1", "backwards", "1-5"]),
    ("a million seeds", ["--seeds", "0-1000000"], ["100,000"]),
    ("many ranges over the cap", ["--seeds", "0-60000,100000-160000"], ["100,000"]),
    ("seeds not numbers", ["--seeds", "abc"], ["abc", "integers"]),
    ("seeds empty", ["--seeds", ""], ["at least one seed"]),
    ("a seed twice", ["--seeds", "1,1"], ["seed", "twice"]),
    ("a negative seed", ["--seeds", "-3"], ["seed", "0"]),
    ("a seed past 2^63", ["--seeds", "99999999999999999999"], ["seed", "0", str(services.MAX_SEED)]),
    ("a fractional seed", ["--seeds", "1.5"], ["1.5", "integers"]),
    ("unknown model", ["--models", "base", "nope"], ["unknown model", "nope"]),
    ("unknown prompt set", ["--prompt-set", "nope"], ["prompt set", "nope"]),
    ("unknown scheduler", ["--scheduler", "fancy"], ["scheduler", "invalid choice"]),
]


@pytest.mark.parametrize("case,changes,says", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_command_refuses_bad_settings(case, changes, says, two_models, prompt_set):
    args = {"--models": ["base", "tuned"], "--prompt-set": ["four"], "--seeds": ["0-1"]}
    for i in range(0, len(changes)):
        if changes[i].startswith("--"):
            values = []
            for value in changes[i + 1 :]:
                if value.startswith("--") and not value[2:3].isdigit():
                    break
                values.append(value)
            args[changes[i]] = values
    argv = [part for flag, values in args.items() for part in (flag, *values)]
    before = state()
    answer = from_command("generate", *argv, "--no-wait")
    check(f"generate: {case}", "command", answer, says=says, before=before, after=state())


def test_generate_command_refuses_missing_or_unknown_batches():
    for case, argv, says in [
        ("no models or prompt set", [], ["--models", "--prompt-set"]),
        ("resume an unknown batch", ["--resume", "999"], ["no batch 999"]),
    ]:
        before = state()
        answer = from_command("generate", *argv, "--no-wait")
        check(f"generate: {case}", "command", answer, says=says, before=before, after=state())


BATCH_FORM_CASES = [
    ("width 0", {"width": "0"}, "width", ["8"]),
    ("a million steps", {"steps": "1000000"}, "steps", ["1000"]),
    ("inference batch size 0", {"inference_batch_size": "0"}, "inference_batch_size", ["1"]),
    ("seeds backwards", {"seeds": "5-1"}, "seeds", ["backwards"]),
    ("a million seeds", {"seeds": "0-1000000"}, "seeds", ["100,000"]),
    ("guidance scale NaN", {"guidance_scale": "nan"}, "guidance_scale", ["number"]),
    ("no model", {"models": []}, "models", ["required"]),
]


@pytest.mark.parametrize("case,changes,field,says", BATCH_FORM_CASES, ids=[c[0] for c in BATCH_FORM_CASES])
def test_admin_batch_form_shows_each_error_under_its_field(
    case, changes, field, says, two_models, prompt_set, admin_client
):
    data = {"models": [m.pk for m in two_models], "prompt_set": prompt_set.pk, "seeds": "0-1", **changes}
    before = state()
    answer = from_form_page(lambda: admin_client.post(reverse("admin:generation_generationbatch_add"), data))
    check(f"admin batch: {case}", "admin", answer, says=says, field=field, before=before, after=state())


def test_create_batch_service_refuses_bad_values(two_models, prompt_set):
    base, tuned = two_models
    cases = [
        ("no model", {"models": []}, ["at least one model"]),
        ("a seed that is a bool", {"seeds": [True]}, ["seed", "whole numbers"]),
        ("steps not a number", {"parameters": {"steps": "abc"}}, ["steps", "whole number"]),
        ("an unknown parameter", {"parameters": {"strength": 1}}, ["unknown", "strength"]),
        ("seeds over the cap", {"seeds": list(range(100_001))}, ["100,000"]),
        ("chunk size a string", {"chunk_size": "64"}, ["chunk size", "whole number"]),
    ]
    for case, changes, says in cases:
        kwargs = {"models": [base, tuned], "prompt_set": prompt_set, "seeds": [0, 1], **changes}
        before = state()
        answer = from_call(lambda: services.create_batch(**kwargs), services.GenerationError)
        check(f"create_batch service: {case}", "service", answer, says=says, before=before, after=state())


# --- Prompt sets -----------------------------------------------------------------------------------------------------

LONG = "ab" * 100_000  # 200,000 characters: over the csv module's own field limit as well as Needle's cap

UPLOAD_CASES = [
    (
        "a prompt over the length cap (CSV)",
        "long.csv",
        f"prompt\nshort one\n{LONG}\n".encode(),
        "file",
        ["line 3", "200,000", "2,000", "shorten"],
    ),
    (
        "a prompt over the length cap (TSV)",
        "long.tsv",
        f"Prompt\tCategory\n{LONG}\tx\n".encode(),
        "file",
        ["line 2", "2,000", "shorten"],
    ),
    ("an unknown extension", "prompts.txt", b"prompt\na cat\n", "file", ["extension", ".csv"]),
    ("no prompt column", "p.csv", b"text\na cat\n", "file", ["prompt", "column"]),
    ("an empty file", "p.csv", b"", "file", ["empty"]),
    ("a header and no prompts", "p.csv", b"prompt\n", "file", ["no prompts"]),
    ("a binary file", "p.csv", b"\x00\x01\x02binary", "file", ["NUL", "UTF-8"]),
    ("Latin-1 text", "p.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "file", ["line 2", "UTF-8"]),
    ("UTF-16 text", "p.csv", "prompt\na cat\n".encode("utf-16"), "file", ["UTF-16"]),
    ("a JSONL line that is not an object", "p.jsonl", b'["a cat"]\n', "file", ["line 1", "object"]),
    ("a JSONL prompt that is a number", "p.jsonl", b'{"prompt": 5}\n', "file", ["line 1", "string"]),
    ("an unclosed quote", "p.csv", b'prompt\n"a cat\n', "file", ["line 2", "malformed"]),
    ("too many fields", "p.csv", b"prompt\na,b,c\n", "file", ["line 2", "fields"]),
    ("an empty prompt", "p.csv", b'prompt\n""\n', "file", ["line 2", "empty prompt"]),
]


@pytest.mark.parametrize("case,filename,data,field,says", UPLOAD_CASES, ids=[c[0] for c in UPLOAD_CASES])
def test_admin_prompt_upload_shows_file_problems_under_the_file_field(case, filename, data, field, says, admin_client):
    before = state()
    answer = from_form_page(
        lambda: admin_client.post(
            reverse("admin:generation_promptset_import"),
            {"name": "new-set", "file": SimpleUploadedFile(filename, data)},
        )
    )
    check(f"prompt upload: {case}", "upload", answer, says=says, field=field, before=before, after=state())


def test_admin_prompt_upload_shows_name_problems_under_the_name_field(prompt_set, admin_client):
    for case, name, says, field in [
        ("a taken name", "four", ["already exists"], "name"),
        ("a blank name", "   ", ["required"], "name"),
    ]:
        before = state()
        answer = from_form_page(
            lambda: admin_client.post(
                reverse("admin:generation_promptset_import"),
                {"name": name, "file": SimpleUploadedFile("p.csv", b"prompt\nx\n")},
            )
        )
        check(f"prompt upload: {case}", "upload", answer, says=says, field=field, before=before, after=state())
    before = state()
    answer = from_form_page(
        lambda: admin_client.post(reverse("admin:generation_promptset_import"), {"name": "new-set"})
    )
    check("prompt upload: no file", "upload", answer, says=["required"], field="file", before=before, after=state())


def test_import_prompts_command_refuses_bad_files(tmp_path, settings):
    settings.NEEDLE_PROMPT_FILE_MAX_BYTES = 1000
    (tmp_path / "long.tsv").write_text(f"Prompt\n{'word ' * 100}\n")
    (tmp_path / "big.csv").write_text("prompt\n" + "a cat\n" * 300)
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "x" * 900}) + "\n")
    for case, argv, says in [
        ("a missing file", [str(tmp_path / "nowhere.csv")], ["is not a file"]),
        ("a file over the size limit", [str(tmp_path / "big.csv")], ["1,000", "NEEDLE_PROMPT_FILE_MAX_BYTES"]),
        ("an unknown format", [str(tmp_path / "long.tsv"), "--format", "xml"], ["format", "invalid choice"]),
    ]:
        before = state()
        answer = from_command("import_prompts", *argv)
        check(f"import_prompts: {case}", "command", answer, says=says, before=before, after=state())
    settings.NEEDLE_PROMPT_MAX_CHARS = 300
    for case, path in [
        ("a prompt over the length cap (TSV)", "long.tsv"),
        ("a prompt over the length cap (JSONL)", "long.jsonl"),
    ]:
        before = state()
        check(
            f"import_prompts: {case}",
            "command",
            from_command("import_prompts", str(tmp_path / path)),
            says=["line 2" if path.endswith("tsv") else "line 1", "300", "shorten"],
            before=before,
            after=state(),
        )
