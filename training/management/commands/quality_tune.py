"""manage.py quality_tune SUBCOMMAND: quality-tuning runs from a terminal.

Same validation and services as the training pages; every refusal is a
CommandError carrying the service's message (exit status 1).

    manage.py quality_tune import-dataset emu-2k /data/curated/emu-2k
    manage.py quality_tune start --base sd15 --dataset emu-2k --max-steps 5000 --checkpoint-every 500 --wait
    manage.py quality_tune status 12
    manage.py quality_tune cancel 12
    manage.py quality_tune register 12 --step 3000 --name sd15-emu-3k
    manage.py quality_tune compare 12 --step 3000 --prompt-set parti --seeds 0-3
    manage.py quality_tune checkpoint-campaign 12 --prompt-set parti-small --seeds 0-1 [--steps 3000 6000]
    manage.py quality_tune pick 12 [--score]
"""

import argparse
import dataclasses

from django.core.management.base import BaseCommand, CommandError

from core.polling import Waiting, wait_until
from generation.models import PromptSet, TextToImageModel
from training import selectors, services
from training.config import QualityTuningConfig
from training.models import CuratedDataset, QualityTuningRun, RunCheckpoint

# Config fields whose default is None, so their type cannot be read from the default.
OPTIONAL_FIELD_TYPES = {"resolution": int, "snr_gamma": float, "prediction_type": str, "keep_last_checkpoints": int}
WORKER_HINT = "Is a worker consuming the 'training' queue? Start one with: celery -A evalsite worker -Q training -c 1"
NO_PROGRESS_HINT_SECONDS = 120


def add_config_arguments(parser) -> None:
    """One flag per QualityTuningConfig field (--max-steps, --batch-size, --random-flip/--no-random-flip, ...)."""
    group = parser.add_argument_group("quality-tuning settings (default: Emu's)")
    for field in dataclasses.fields(QualityTuningConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(field.default, tuple):
            group.add_argument(flag, dest=field.name, nargs="+", type=type(field.default[0]), default=None, metavar="V")
        else:
            kind = OPTIONAL_FIELD_TYPES.get(field.name, type(field.default))
            group.add_argument(
                flag,
                dest=field.name,
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=f"default {field.default}",
            )


class Command(BaseCommand):
    help = "Import curated datasets; start, watch and cancel quality-tuning runs; register checkpoints; compare them with the base."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        dataset = sub.add_parser("import-dataset", help="check a curated dataset folder and freeze it under a name")
        dataset.add_argument("name")
        dataset.add_argument("path")
        dataset.add_argument("--description", default="")

        start = sub.add_parser("start", help="create a run and queue it on the 'training' queue")
        start.add_argument("--base", required=True, metavar="MODEL", help="registered base model (SD 1.x/2.x)")
        start.add_argument("--dataset", required=True, metavar="NAME", help="frozen curated dataset")
        start.add_argument("--wait", action="store_true", help="follow the run until it ends")
        start.add_argument(
            "--timeout", type=float, default=0, help="with --wait: give up waiting after this many seconds"
        )
        start.add_argument(
            "--aesthetic-head",
            default="",
            metavar="PATH",
            help="LAION-format aesthetic head: score each checkpoint's validation images (automatic pick)",
        )
        start.add_argument(
            "--clip-model",
            default="",
            metavar="PATH",
            help="the open_clip weights (file or exported folder) the head sits on",
        )
        start.add_argument(
            "--clip-model-name", default="", metavar="NAME", help="open_clip architecture, e.g. ViT-L-14"
        )
        add_config_arguments(start)

        sub.add_parser("status", help="progress, loss, time left and checkpoints of a run").add_argument(
            "run_id", type=int
        )
        sub.add_parser("cancel", help="stop a run (it saves a checkpoint first)").add_argument("run_id", type=int)
        resume = sub.add_parser(
            "resume", help="queue a failed or cancelled run again; it resumes from its newest checkpoint"
        )
        resume.add_argument("run_id", type=int)
        sub.add_parser("list", help="the latest runs")

        register = sub.add_parser("register", help="export a checkpoint and register it as a model")
        register.add_argument("run_id", type=int)
        register.add_argument("--step", type=int, required=True)
        register.add_argument("--name", required=True, help="name of the new model")

        compare = sub.add_parser(
            "compare", help="a draft campaign: the checkpoint against its base, both of Emu's criteria"
        )
        compare.add_argument("run_id", type=int)
        compare.add_argument("--step", type=int, required=True)
        compare.add_argument("--prompt-set", required=True)
        compare.add_argument("--seeds", required=True, help="e.g. '0-3'")
        compare.add_argument("--name", help="campaign name (default: 'TUNED vs BASE')")
        compare.add_argument("--model-name", help="name for the checkpoint's model if it is not registered yet")

        campaign = sub.add_parser(
            "checkpoint-campaign",
            help="a draft campaign: every checkpoint against the base, visual appeal, to choose the step",
        )
        campaign.add_argument("run_id", type=int)
        campaign.add_argument("--prompt-set", required=True)
        campaign.add_argument("--seeds", default="0", help="e.g. '0-1' (default 0)")
        campaign.add_argument("--steps", type=int, nargs="+", help="default: every checkpoint still on disk")
        campaign.add_argument(
            "--votes-per-item",
            type=int,
            help=f"raters per comparison (default {services.CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM})",
        )
        campaign.add_argument("--new", action="store_true", help="create another even if the run has one")

        pick = sub.add_parser(
            "pick", help="per step: validation aesthetic score and raters' win rate vs base; the automatic pick"
        )
        pick.add_argument("run_id", type=int)
        pick.add_argument("--score", action="store_true", help="score validation images not scored yet first")

    def handle(self, *args, subcommand, **options):
        handler = getattr(self, "handle_" + subcommand.replace("-", "_"))
        try:
            handler(**options)
        except services.TrainingError as exc:
            raise CommandError(str(exc)) from None

    # --- Subcommands ------------------------------------------------------------------------

    def handle_import_dataset(self, name, path, description, **o):
        dataset = services.import_curated_dataset(name, path, description=description)
        self.stdout.write(
            f"Froze curated dataset {dataset.name}: {dataset.image_count} images from {dataset.path}, "
            f"content hash {dataset.content_hash}"
        )

    def handle_start(self, base, dataset, wait, timeout, aesthetic_head, clip_model, clip_model_name, **o):
        base_model = TextToImageModel.objects.filter(name=base).first()
        if base_model is None:
            raise CommandError(
                f"There is no registered model named {base!r} (register it with manage.py register_model)."
            )
        curated = CuratedDataset.objects.filter(name=dataset).first()
        if curated is None:
            raise CommandError(
                f"There is no curated dataset named {dataset!r} (freeze one with: quality_tune import-dataset NAME PATH)."
            )
        overrides = {f.name: o[f.name] for f in dataclasses.fields(QualityTuningConfig) if o.get(f.name) is not None}
        run = services.create_run(
            base_model,
            curated,
            aesthetic_head_path=aesthetic_head,
            clip_model_path=clip_model,
            clip_model_name=clip_model_name,
            **overrides,
        )
        services.start_run(run)
        self.stdout.write(
            f"Run {run.pk} queued: {base_model.name} on {curated.name}, {run.max_steps} steps, "
            f"run directory {run.run_dir}"
        )
        if wait:
            self._wait(run, timeout)

    def handle_status(self, run_id, **o):
        run = self._run(run_id)
        p = selectors.run_progress(run)
        out = self.stdout.write
        out(
            f"Run {run.pk}: {run.base_model.name} on {run.dataset.name}: {run.status}{' (stale: its worker stopped reporting)' if p['stale'] else ''}"
        )
        out(
            f"Step {run.step} / {run.max_steps} ({run.percent}%)"
            + (f", loss {run.loss:.5f}" if run.loss is not None else "")
            + (f", {run.seconds_per_step:.3f} s/step" if run.seconds_per_step else "")
            + (f", {p['eta']} left" if p["eta"] else "")
        )
        if run.worker:
            out(f"Worker: {run.worker} (attempt {run.attempts})")
        if run.error:
            out(f"Error: {run.error}")
        for cp in p["checkpoints"]:
            model = f" -> model {cp['registered_model']}" if cp["registered_model"] else ""
            gone = "" if cp["exists"] else " (deleted)"
            loss = f" loss {cp['loss']:.5f}" if cp["loss"] is not None else ""
            out(f"  checkpoint step {cp['step']}: saved {cp['saved_at']}{loss}{gone}{model}")
        out(f"Run directory: {run.run_dir}")

    def handle_cancel(self, run_id, **o):
        run = services.cancel_run(self._run(run_id))
        self.stdout.write(f"Run {run.pk}: {run.status}")

    def handle_resume(self, run_id, **o):
        run = services.start_run(self._run(run_id))
        self.stdout.write(f"Run {run.pk}: {run.status}")

    def handle_list(self, **o):
        for run in QualityTuningRun.objects.select_related("base_model", "dataset")[:50]:
            self.stdout.write(
                f"{run.pk:>5}  {run.status:<10} {run.step:>6}/{run.max_steps:<6} {run.base_model.name} on {run.dataset.name}"
            )

    def handle_register(self, run_id, step, name, **o):
        model = services.register_checkpoint(self._checkpoint(run_id, step), name)
        self.stdout.write(
            f"Registered step {step} of run {run_id} as {model.name} (parent {model.parent.name}, "
            f"fingerprint {model.weights_fingerprint[:12]}, {model.pipeline_path})"
        )

    def handle_compare(self, run_id, step, prompt_set, seeds, name, model_name, **o):
        prompts = PromptSet.objects.filter(name=prompt_set).first()
        if prompts is None:
            raise CommandError(f"There is no prompt set named {prompt_set!r}.")
        campaign = services.create_tuned_vs_base_campaign(
            self._checkpoint(run_id, step), prompts, seeds, name, model_name=model_name
        )
        models = " vs ".join(
            cm.model.name for cm in campaign.campaign_models.select_related("model").order_by("position")
        )
        self.stdout.write(
            f"Created draft campaign {campaign.name!r} (id {campaign.pk}): {models}, both criteria. "
            f"Launch it with: manage.py campaign launch {campaign.name!r}"
        )

    def handle_checkpoint_campaign(self, run_id, prompt_set, seeds, steps, votes_per_item, new, **o):
        run = self._run(run_id)
        existing = run.checkpoint_campaign_id
        campaign = services.create_checkpoint_campaign(
            run, prompt_set=prompt_set, seeds=seeds, steps=steps, votes_per_item=votes_per_item, new=new
        )
        models = ", ".join(
            cm.model.name for cm in campaign.campaign_models.select_related("model").order_by("position")[1:]
        )
        if campaign.pk == existing:
            self.stdout.write(
                f"Run {run.pk} already has its checkpoint campaign {campaign.name!r} (id {campaign.pk}, "
                f"{campaign.status}); pass --new for another."
            )
            return
        self.stdout.write(
            f"Created draft campaign {campaign.name!r} (id {campaign.pk}): {models} each vs "
            f"{run.base_model.name}, visual appeal. Launch it with: manage.py campaign launch {campaign.name!r}"
        )

    def handle_pick(self, run_id, score, **o):
        run = self._run(run_id)
        if score:
            services.score_validation_images(run, require_all=False)
        rates = {row["step"]: row for row in selectors.checkpoint_win_rates(run)}
        pick = selectors.automatic_pick(run)
        out = self.stdout.write
        out(f"Run {run.pk}: {run.base_model.name} on {run.dataset.name}, {run.status} at step {run.step}")
        out(f"{'step':>7}  {'loss':>9}  {'aesthetic':>9}  {'vs base':>8}  {'95% interval':>13}  comparisons")
        for cp in run.checkpoints.all():
            rate = rates.get(cp.step)
            win = f"{rate['win_rate']:.0%}" if rate and rate["win_rate"] is not None else "—"
            interval = f"{rate['low']:.0%}-{rate['high']:.0%}" if rate and rate["low"] is not None else "—"
            count = (
                (f"{rate['comparisons']}" + (f" (+{rate['incomplete']} incomplete)" if rate["incomplete"] else ""))
                if rate
                else "—"
            )
            loss = f"{cp.loss:.5f}" if cp.loss is not None else "—"
            aesthetic = f"{cp.validation_aesthetic_score:.3f}" if cp.validation_aesthetic_score is not None else "—"
            mark = "  <- automatic pick" if pick is not None and pick.pk == cp.pk else ""
            out(f"{cp.step:>7}  {loss:>9}  {aesthetic:>9}  {win:>8}  {interval:>13}  {count}{mark}")
        if pick is not None:
            out(f"Automatic pick: step {pick.step} (validation aesthetic score {pick.validation_aesthetic_score:.3f}).")
        elif run.aesthetic_head_path:
            out("No automatic pick yet: no checkpoint's validation images are scored (quality_tune pick --score).")
        else:
            out("No automatic pick: the run has no aesthetic head configured.")
        if run.checkpoint_campaign is None:
            out(f"No checkpoint campaign yet: quality_tune checkpoint-campaign {run.pk} --prompt-set NAME --seeds 0-1")

    # --- Helpers ----------------------------------------------------------------------------

    def _run(self, run_id: int) -> QualityTuningRun:
        run = QualityTuningRun.objects.select_related("base_model", "dataset").filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"There is no run {run_id}.")
        return run

    def _checkpoint(self, run_id: int, step: int) -> RunCheckpoint:
        run = self._run(run_id)
        checkpoint = run.checkpoints.filter(step=step).first()
        if checkpoint is None:
            steps = ", ".join(str(s) for s in run.checkpoints.values_list("step", flat=True)) or "none yet"
            raise CommandError(f"Run {run_id} has no checkpoint at step {step} (checkpoints: {steps}).")
        return checkpoint

    def _wait(self, run: QualityTuningRun, timeout: float) -> None:
        last = (None, None)

        def step(waiting: Waiting) -> bool:
            nonlocal last
            run.refresh_from_db()
            now = (run.status, run.step)
            if now != last:
                loss = f" loss {run.loss:.5f}" if run.loss is not None else ""
                self.stdout.write(f"{run.status}: step {run.step}/{run.max_steps}{loss}")
                last = now
                waiting.progressed()
            elif waiting.hint_due(when=run.status == QualityTuningRun.Status.QUEUED):
                self.stderr.write(f"Still queued after {NO_PROGRESS_HINT_SECONDS} s. {WORKER_HINT}")
            if run.status in QualityTuningRun.TERMINAL:
                return True
            if waiting.timed_out():
                raise CommandError(
                    f"Run {run.pk} is still {run.status} after {timeout:.0f} s; it goes on (quality_tune status {run.pk})."
                )
            return False

        wait_until(step, interval=1, timeout=timeout, hint_after=NO_PROGRESS_HINT_SECONDS)
        if run.status != QualityTuningRun.Status.FINISHED:
            raise CommandError(f"Run {run.pk} {run.status} at step {run.step}: {run.error}")
        self.stdout.write(
            f"Run {run.pk} finished: {run.checkpoints.count()} checkpoints. Register one with: "
            f"manage.py quality_tune register {run.pk} --step {run.step} --name NAME"
        )
