"""The training app's part of the bad-input corpus (evalsite/bad_input.py): quality-tuning settings and runs through
the ``quality_tune`` command, the new-run page and the services.

The whole config is validated when a run is created and again when it is started: each bad value is refused with its
setting named and its allowed range, never a traceback from the trainer hours later, and no run row or run folder is
left behind.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from evalsite.bad_input import check, from_call, from_command, from_form_page, snapshot
from training import services
from training.forms import QualityTuningRunForm
from training.models import CuratedDataset, QualityTuningRun, RunCheckpoint

pytestmark = pytest.mark.django_db


def state():
    return snapshot(QualityTuningRun, CuratedDataset, RunCheckpoint, dirs=[services.training_dir() / "runs"])


START_CASES = [
    ("learning rate NaN", ["--learning-rate", "nan"], ["learning_rate", "finite"]),
    ("learning rate infinite", ["--learning-rate", "inf"], ["learning_rate", "finite"]),
    ("learning rate negative", ["--learning-rate", "-1"], ["learning_rate", "above 0"]),
    ("learning rate 0", ["--learning-rate", "0"], ["learning_rate", "above 0"]),
    ("learning rate 5", ["--learning-rate", "5"], ["learning_rate", "at most 1"]),
    ("adam beta1 5", ["--adam-beta1", "5"], ["adam_beta1", "below 1", "0.9"]),
    ("adam beta1 negative", ["--adam-beta1", "-0.1"], ["adam_beta1", "0"]),
    ("adam beta2 1", ["--adam-beta2", "1"], ["adam_beta2", "below 1", "0.999"]),
    ("adam beta2 NaN", ["--adam-beta2", "nan"], ["adam_beta2", "finite"]),
    ("adam epsilon 0", ["--adam-epsilon", "0"], ["adam_epsilon", "above 0"]),
    ("adam epsilon NaN", ["--adam-epsilon", "nan"], ["adam_epsilon", "finite"]),
    ("weight decay negative", ["--adam-weight-decay", "-1"], ["adam_weight_decay", "0"]),
    ("weight decay infinite", ["--adam-weight-decay", "inf"], ["adam_weight_decay", "finite"]),
    ("max grad norm negative", ["--max-grad-norm", "-1"], ["max_grad_norm", "above 0"]),
    ("max grad norm NaN", ["--max-grad-norm", "nan"], ["max_grad_norm", "finite"]),
    ("noise offset NaN", ["--noise-offset", "nan"], ["noise_offset", "finite"]),
    ("noise offset negative", ["--noise-offset", "-0.1"], ["noise_offset", "0"]),
    ("Min-SNR gamma 0", ["--snr-gamma", "0"], ["snr_gamma", "above 0"]),
    ("Min-SNR gamma NaN", ["--snr-gamma", "nan"], ["snr_gamma", "finite"]),
    ("EMA decay 1.5", ["--ema-decay", "1.5"], ["ema_decay", "between 0 and 1"]),
    ("EMA decay NaN", ["--ema-decay", "nan"], ["ema_decay", "between 0 and 1"]),
    ("max steps 0", ["--max-steps", "0"], ["max_steps", "at least 1"]),
    ("max steps 10**10", ["--max-steps", str(10**10)], ["max_steps", "1,000,000"]),
    ("batch size 0", ["--batch-size", "0"], ["batch_size", "at least 1"]),
    (
        "batch size not a multiple of accumulation",
        ["--batch-size", "6", "--gradient-accumulation-steps", "4"],
        ["batch_size", "multiple", "gradient_accumulation_steps"],
    ),
    ("accumulation 0", ["--gradient-accumulation-steps", "0"], ["gradient_accumulation_steps", "at least 1"]),
    ("checkpoint every 0", ["--checkpoint-every", "0"], ["checkpoint_every", "at least 1"]),
    ("validation every -1", ["--validation-every", "-1"], ["validation_every", "at least 1"]),
    ("keep last 0 checkpoints", ["--keep-last-checkpoints", "0"], ["keep_last_checkpoints", "at least 1"]),
    ("warmup negative", ["--lr-warmup-steps", "-5"], ["lr_warmup_steps", "0"]),
    ("resolution 12", ["--resolution", "12"], ["resolution", "multiple of 8"]),
    ("resolution 65536", ["--resolution", "65536"], ["resolution", "4096"]),
    ("seed negative", ["--seed", "-1"], ["seed", "0"]),
    ("seed 2**70", ["--seed", str(2**70)], ["seed", "0"]),
    ("a negative validation seed", ["--validation-seeds", "-1"], ["validation_seeds", "0"]),
    ("validation steps 0", ["--validation-inference-steps", "0"], ["validation_inference_steps", "1"]),
    ("validation steps 100000", ["--validation-inference-steps", "100000"], ["validation_inference_steps", "1,000"]),
    ("validation guidance NaN", ["--validation-guidance-scale", "nan"], ["validation_guidance_scale", "finite"]),
    ("validation guidance negative", ["--validation-guidance-scale", "-2"], ["validation_guidance_scale", "0"]),
    ("mixed precision fp8", ["--mixed-precision", "fp8"], ["mixed_precision", "bf16"]),
    ("prediction type sample", ["--prediction-type", "sample"], ["prediction_type", "epsilon"]),
    ("an unknown base model", ["--base", "nope"], ["no registered model", "nope"]),
    ("an unknown dataset", ["--dataset", "nope"], ["no curated dataset", "nope"]),
]


@pytest.mark.parametrize("case,changes,says", START_CASES, ids=[c[0] for c in START_CASES])
def test_quality_tune_start_refuses_bad_settings(case, changes, says, base_model, dataset):
    args = {"--base": ["sd-base"], "--dataset": ["shapes"]}
    flag = None
    for part in changes:
        if part.startswith("--") and not part[2:3].isdigit():
            flag = part
            args[flag] = []
        else:
            args[flag].append(part)
    before = state()
    answer = from_command("quality_tune", "start", *[p for f, values in args.items() for p in (f, *values)])
    check(f"quality_tune start: {case}", "command", answer, says=says, before=before, after=state())


def test_quality_tune_refuses_unknown_runs_and_steps():
    for case, argv, says in [
        ("resume an unknown run", ["resume", "999"], ["no run 999"]),
        ("status of an unknown run", ["status", "999"], ["no run 999"]),
        ("cancel an unknown run", ["cancel", "999"], ["no run 999"]),
        ("register a step of an unknown run", ["register", "999", "--step", "1", "--name", "x"], ["no run 999"]),
    ]:
        before = state()
        answer = from_command("quality_tune", *argv)
        check(f"quality_tune: {case}", "command", answer, says=says, before=before, after=state())


def form_data(**changes):
    form = QualityTuningRunForm()
    data = {name: f.initial for name, f in form.fields.items() if f.initial is not None and f.initial is not False}
    data.update(base_model="sd-base", dataset="shapes", start_now="")
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


FORM_CASES = [
    ("learning rate NaN", {"learning_rate": "nan"}, "learning_rate", ["number"]),
    ("learning rate negative", {"learning_rate": "-0.001"}, "learning_rate", ["learning_rate", "above 0"]),
    (
        "batch size not a multiple of accumulation",
        {"batch_size": "6", "gradient_accumulation_steps": "4"},
        "batch_size",
        ["multiple"],
    ),
    ("EMA decay 2", {"ema_decay": "2"}, "ema_decay", ["between 0 and 1"]),
    ("resolution 12", {"resolution": "12"}, "resolution", ["multiple of 8"]),
    ("validation seeds backwards", {"validation_seeds": "5-1"}, "validation_seeds", ["backwards"]),
    ("no validation prompt", {"validation_prompts": "  \n "}, "validation_prompts", ["required|at least one"]),
    ("max steps 10**12", {"max_steps": str(10**12)}, "max_steps", ["1,000,000"]),
    ("seed negative", {"seed": "-1"}, "seed", ["0"]),
    ("noise offset NaN", {"noise_offset": "nan"}, "noise_offset", ["number"]),
    ("keep last 0 checkpoints", {"keep_last_checkpoints": "0"}, "keep_last_checkpoints", ["at least 1"]),
    (
        "an aesthetic head that is not there",
        {"aesthetic_head_path": "/nowhere/head.pth", "clip_model_path": "/nowhere/clip"},
        "aesthetic_head_path",
        ["not found|does not exist|not a file"],
    ),
    (
        "an aesthetic head without its CLIP model",
        {"aesthetic_head_path": "/nowhere/head.pth"},
        "clip_model_path",
        ["CLIP"],
    ),
    ("a validation prompt starting with a dash", {"validation_prompts": "-x"}, "validation_prompts", ["'-'"]),
]


@pytest.mark.parametrize("case,changes,field,says", FORM_CASES, ids=[c[0] for c in FORM_CASES])
def test_new_run_page_shows_each_error_under_its_field(case, changes, field, says, base_model, dataset, client):
    client.force_login(get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True))
    before = state()
    answer = from_form_page(lambda: client.post(reverse("training:run_new"), form_data(**changes)))
    check(f"new run page: {case}", "form", answer, says=says, field=field, before=before, after=state())


def test_dataset_import_page_shows_each_error_under_its_field(dataset, client, tmp_path):
    client.force_login(get_user_model().objects.create_user("researcher", password="pw-long-enough-1", is_staff=True))
    for case, data, field, says in [
        ("a taken name", {"name": "shapes", "path": str(tmp_path)}, "name", ["already exists"]),
        ("a folder that is not there", {"name": "new", "path": str(tmp_path / "nowhere")}, "path", ["nowhere"]),
        ("a folder without captions", {"name": "new", "path": str(tmp_path)}, "path", ["captions.jsonl"]),
    ]:
        before = state()
        answer = from_form_page(lambda: client.post(reverse("training:dataset_list"), data))
        check(f"dataset import page: {case}", "form", answer, says=says, field=field, before=before, after=state())


def test_create_run_service_refuses_bad_values(base_model, dataset):
    for case, overrides, says, field in [
        ("adam beta1 5", {"adam_beta1": 5}, ["adam_beta1", "below 1"], "adam_beta1"),
        ("an unknown setting", {"learning_speed": 1}, ["unknown", "learning_speed"], None),
        ("batch size a string", {"batch_size": "64"}, ["batch_size", "whole number"], "batch_size"),
        ("batch size a bool", {"batch_size": True}, ["batch_size", "whole number"], "batch_size"),
        ("learning rate a string", {"learning_rate": "fast"}, ["learning_rate", "number"], "learning_rate"),
        ("EMA a string", {"use_ema": "yes"}, ["use_ema", "true or false"], "use_ema"),
        (
            "no validation prompts",
            {"validation_prompts": []},
            ["validation_prompts", "at least one"],
            "validation_prompts",
        ),
        (
            "a validation prompt that is a number",
            {"validation_prompts": [5]},
            ["validation_prompts", "text"],
            "validation_prompts",
        ),
        (
            "a fractional validation seed",
            {"validation_seeds": [1.5]},
            ["validation_seeds", "whole numbers"],
            "validation_seeds",
        ),
        ("a validation prompt starting with a dash", {"validation_prompts": ["-x"]}, ["'-'"], "validation_prompts"),
    ]:
        before = state()
        answer = from_call(lambda: services.create_run(base_model, dataset, **overrides), services.TrainingError)
        check(f"create_run service: {case}", "service", answer, says=says, before=before, after=state())
        if field is not None and answer.kind == "refused":
            assert answer.field == field, (case, answer.field)


def test_start_refuses_a_run_whose_stored_config_is_invalid(base_model, dataset):
    """A run made before validation existed (or edited by hand) is checked again when it is started."""
    run = services.create_run(base_model, dataset, max_steps=6, resolution=32, batch_size=4)
    QualityTuningRun.objects.filter(pk=run.pk).update(config={**run.config, "adam_beta1": 5}, status="failed")
    run.refresh_from_db()
    before = state()
    answer = from_call(lambda: services.start_run(run), services.TrainingError)
    check(
        "start_run service: a stored config with adam beta1 5",
        "service",
        answer,
        says=["adam_beta1", "below 1", "new run"],
        before=before,
        after=state(),
    )
    run.refresh_from_db()
    assert run.status == "failed" and not run.celery_task_id
