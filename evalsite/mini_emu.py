"""The mini-Emu loop, driven through Needle's own services and pages: curate, quality-tune, evaluate.

(About 510 lines, kept whole: the loop reads as one script, step by step, like the docs/mini-emu.md it
reproduces.)

1. **Curation** (training app, human stages): a candidate pool of world renders is imported; simulated reviewers
   rate a sample on the review pages (a generalist stage in rating mode); an aesthetic head is trained from those
   ratings; the automatic funnel (resolution, near-duplicates, the world CLIP's score, that head) runs over the
   pool; simulated generalists keep or reject its survivors and specialists select the needles, which are frozen.
2. **Quality-tuning** (training app): the shipped base on the needles, Emu's recipe at the world's scale; a
   checkpoint campaign (simulated raters, visual appeal) picks the step. A control run tunes on randomly chosen
   pool images.
3. **Evaluation** (annotation and analysis): tuned vs base, control vs base and base vs base on held-out prompts,
   both of Emu's criteria, simulated raters through invite links, and the report's win rates and intervals.

Simulated people only ever talk HTTP to the site (``evalsite.simulated_people``) and judge pixels with the world's
hidden appeal and oracle (``world.raters``). Everything is named, so a rerun reuses what exists.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth.models import Permission, User

from analysis import services as analysis_services
from annotation import services as annotation_services
from annotation.models import Campaign
from evalsite.simulated_people import RaterBrowser, ReviewerBrowser
from generation import services as generation_services
from generation.models import PromptSet, TextToImageModel
from training import selectors as training_selectors
from training import services as training_services
from training.models import CandidateCollection, CuratedDataset, CurationReview, CurationRun, QualityTuningRun
from training.services import reviews
from world import corpus
from world.appeal import appeal_score
from world.oracle import faithfulness
from world.raters import SimulatedReviewer, crowd

WEIGHTS_DIR = Path(settings.BASE_DIR) / "world" / "weights"
BASE_MODEL = "mini-emu-base"
NULL_MODEL = "mini-emu-base-again"
PROMPT_SET = "mini-emu-heldout"
REVIEWER = "sim-reviewer"
SIMULATED_LINK = "simulated raters"


@dataclass(frozen=True)
class Scale:
    pool: int
    rating_sample: int
    needles: int
    tune_steps: int
    checkpoint_every: int
    prompts: int
    seeds: str
    checkpoint_prompts: int
    raters: int
    quota: int
    gold_share: float = 0.1  # enough that each rater's quota reaches the gold answers exclusion needs
    leave_for_people: int = 0  # appeal items per campaign left for a person to vote on in the demo


# fmt: off
SCALES = {  # one row per scale, the fields in Scale's order
    name: Scale(*row)
    for name, row in {
        #        pool  rating  needles  tune  every  prompts  seeds  ckpt  raters  quota  gold  people
        "ci":   ( 240,     60,      24,   30,    15,      12,   "0",    6,     12,    24,  0.2,      0),
        "demo": (1600,    240,     160,  240,    80,      48,   "0",   16,     30,    40,  0.1,     10),
        "full": (5000,    500,     400,  480,   120,     200, "0-1",   40,     80,    60,  0.1,      0),
    }.items()
}
# fmt: on
#: Emu's recipe scaled to the world: a small constant learning rate, noise offset 0.1, a short run, batch 16.
TUNING = {
    "learning_rate": 5e-5,
    "noise_offset": 0.1,
    "batch_size": 16,
    "resolution": 64,
    "validation_every": 10_000,
    "validation_inference_steps": 10,
    "validation_guidance_scale": 3.0,
    "seed": 0,
}


class Loop:
    def __init__(self, base_url: str, scale: str = "demo", log=print, workdir: Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.scale = SCALES[scale]
        self.scale_name = scale
        self.log = log
        self.workdir = Path(workdir or Path(settings.NEEDLE_TRAINING_DIR) / "mini-emu")
        self.clip_path = str(WEIGHTS_DIR / "clip")

    # --- models and prompts ---------------------------------------------------------------------------

    def base_model(self) -> TextToImageModel:
        existing = TextToImageModel.objects.filter(name=BASE_MODEL).first()
        if existing:
            return existing
        self.log(f"Registering the shipped base model {BASE_MODEL} ({WEIGHTS_DIR / 'base'})")
        return generation_services.register_model(
            name=BASE_MODEL, pipeline_path=str(WEIGHTS_DIR / "base"), steps=20, guidance_scale=3.0, width=64, height=64
        )

    def null_model(self) -> TextToImageModel:
        existing = TextToImageModel.objects.filter(name=NULL_MODEL).first()
        if existing:
            return existing
        return generation_services.register_model(
            name=NULL_MODEL,
            pipeline_path=str(WEIGHTS_DIR / "base"),
            steps=20,
            guidance_scale=3.0,
            width=64,
            height=64,
            description="The base again, for the null campaign (base vs base).",
        )

    def prompt_set(
        self, name: str = PROMPT_SET, count: int | None = None, seed_base: int = corpus.EVAL_SEED_BASE
    ) -> PromptSet:
        name = f"{name}-{self.scale_name}"
        existing = PromptSet.objects.filter(name=name).first()
        if existing:
            return existing
        prompt_set, _ = generation_services.import_prompt_set(
            name=name, data=corpus.prompt_set_csv(count or self.scale.prompts, seed_base), filename=f"{name}.csv"
        )
        return prompt_set

    # --- simulated people ---------------------------------------------------------------------------

    def reviewer_account(self) -> tuple[str, str]:
        password = "simulated-reviewer-password"
        user, created = User.objects.get_or_create(username=REVIEWER)
        if created:
            user.set_password(password)
            user.save()
            user.user_permissions.add(
                Permission.objects.get(codename="review_curation", content_type__app_label="training")
            )
        return REVIEWER, password

    def review(self, review: CurationReview, decide) -> int:
        browser = ReviewerBrowser(self.base_url)
        browser.sign_in(*self.reviewer_account())
        return browser.review(review.name, decide)

    def invite_url(self, campaign: Campaign) -> str:
        link = campaign.invite_links.filter(
            label=SIMULATED_LINK, simulated=True
        ).first() or annotation_services.create_invite_link(campaign, label=SIMULATED_LINK, simulated=True)
        return f"{self.base_url}/join/{link.token}/"

    def simulate_raters(
        self,
        campaign: Campaign,
        count: int | None = None,
        *,
        seed: int = 0,
        careless_share: float = 0.1,
        threads: int = 6,
        stop_before: int = 0,
    ) -> dict:
        """``count`` simulated raters vote on the campaign through its invite link, several at a time."""
        invite = self.invite_url(campaign)
        raters = crowd(count or self.scale.raters, seed=seed + campaign.pk * 1000, careless_share=careless_share)
        totals = {"raters": 0, "votes": 0, "screened_out": 0, "finished": 0}
        lock = threading.Lock()
        pending = list(raters)

        def judge_with(rater):
            def judge(task, left, right):
                if "prompt" in task:
                    return rater.judge_faithfulness(left, right, task["prompt"], salt=task["id"])
                return rater.judge_appeal(left, right, salt=task["id"])

            return judge

        def work():
            while True:
                with lock:
                    if not pending:
                        return
                    rater = pending.pop(0)
                browser = RaterBrowser(self.base_url)
                browser.join(invite, rater.name)
                session = browser.rate(judge_with(rater))
                with lock:
                    totals["raters"] += 1
                    totals["votes"] += session.votes
                    totals["screened_out"] += int(session.screened_out)
                    totals["finished"] += int(session.finished)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return totals

    # --- 1. curation ----------------------------------------------------------------------------------

    def collection(self, name: str, size: int, seed_base: int) -> CandidateCollection:
        existing = CandidateCollection.objects.filter(name=name).first()
        if existing:
            return existing
        folder = corpus.write_candidate_pool(self.workdir / name, size, seed_base)
        return training_services.import_candidate_collection(name, str(folder))

    def funnel(self, collection: CandidateCollection, stages: list[dict], head: str = "") -> CurationRun:
        existing = CurationRun.objects.filter(collection=collection, status="finished").order_by("-pk")
        existing = next((run for run in existing if run.stage_config == stages), None) if stages else None
        if existing:
            return existing
        run = training_services.create_curation_run(
            collection, stages, clip_model_path=self.clip_path, aesthetic_head_path=head
        )
        training_services.execute_curation_run(run.pk)
        run.refresh_from_db()
        if run.status != "finished":
            raise RuntimeError(f"funnel run {run.pk} ended {run.status}: {run.error}")
        return run

    def aesthetic_head(self) -> str:
        """Reviewers rate a sample 1-5 on the review page; a head is trained on their ratings (Needle's own code)."""
        name = f"mini-emu-ratings-{self.scale_name}"
        review = CurationReview.objects.filter(name=name).first()
        if review is None:
            sample = self.collection(
                f"mini-emu-rating-sample-{self.scale_name}", self.scale.rating_sample, corpus.POOL_SEED_BASE + 5_000_000
            )
            run = self.funnel(sample, [{"kind": "ResolutionStage", "min_side": 32, "max_aspect_ratio": 2.0}])
            review = reviews.open_generalist_review(run, name, mode=CurationReview.Mode.RATING)
        reviewer = SimulatedReviewer(keep_above=0.0, noise=0.05, seed=1)
        decided = self.review(
            review, lambda caption, pixels: {"rating": int(round(1 + (reviewer.rating(pixels, caption) - 1) * 4 / 9))}
        )
        self.log(f"  reviewers rated {decided} sample images on the review page")
        head = Path(settings.NEEDLE_TRAINING_DIR) / "aesthetic-heads" / f"{name}.pth"
        if not head.exists():
            reviews.train_aesthetic_head_from_review(review, out_path=head)
        return str(head)

    def _calibrate(
        self, collection: CandidateCollection, head: str, keep_aesthetic: float, keep_clip: float
    ) -> tuple[float, float]:
        """Thresholds that keep the best ``keep_*`` share of a collection, as a researcher reads them off a sample."""
        from training.aesthetic import AestheticHead  # torch and open_clip: only when a loop runs
        from training.clip_scoring import load_clip

        rows = list(collection.candidates.order_by("pk")[:400])
        images = [training_services.funnel_candidate(row).open_image() for row in rows]
        scorer = load_clip(None, self.clip_path)
        embeddings = scorer.embed_images(images)
        aesthetic = AestheticHead.load(head).predict(embeddings)
        clip = scorer.scores(images, [row.caption for row in rows])
        return float(np.quantile(aesthetic, 1 - min(keep_aesthetic, 1.0))), float(np.quantile(clip, 1 - keep_clip))

    def needles(self) -> CuratedDataset:
        name = f"mini-emu-needles-{self.scale_name}"
        existing = CuratedDataset.objects.filter(name=name).first()
        if existing:
            return existing
        head = self.aesthetic_head()
        pool = self.collection(f"mini-emu-pool-{self.scale_name}", self.scale.pool, corpus.POOL_SEED_BASE)
        keep_share = min(1.0, 4.0 * self.scale.needles / self.scale.pool)
        aesthetic_cut, clip_cut = self._calibrate(pool, head, keep_aesthetic=keep_share / 0.8, keep_clip=0.8)
        stages = [
            {"kind": "ResolutionStage", "min_side": 32, "max_aspect_ratio": 2.0},
            {"kind": "NearDuplicateStage", "max_hamming": 2},
            {"kind": "ClipScoreStage", "min_score": round(clip_cut, 3)},
            {"kind": "AestheticStage", "min_score": round(aesthetic_cut, 3)},
        ]
        run = self.funnel(pool, stages, head=head)
        self.log(f"  funnel kept {run.count_kept} of {run.count_in} pool images")
        generalists = CurationReview.objects.filter(
            name=f"mini-emu-generalists-{self.scale_name}"
        ).first() or reviews.open_generalist_review(run, f"mini-emu-generalists-{self.scale_name}")
        # Generalists keep about the better half of what the funnel passed, by their own eye.
        appeal_cut = self._median_appeal(run)
        generalist = SimulatedReviewer(keep_above=appeal_cut, noise=0.03, seed=2)
        decided = self.review(
            generalists, lambda caption, pixels: {"keep": "1" if generalist.keep(pixels, caption) else "0"}
        )
        self.log(f"  generalists decided {decided} candidates")
        specialists = CurationReview.objects.filter(
            name=f"mini-emu-specialists-{self.scale_name}"
        ).first() or reviews.open_specialist_review(
            generalists, f"mini-emu-specialists-{self.scale_name}", target_size=self.scale.needles
        )
        specialist = SimulatedReviewer(keep_above=appeal_cut + 0.02, noise=0.02, seed=3)
        decided = self.review(
            specialists,
            lambda caption, pixels: (
                {"keep": "1", "reasons": ["composition", "colour_contrast"], "caption": caption}
                if specialist.keep(pixels, caption)
                else {"keep": "0", "caption": caption}
            ),
        )
        self.log(f"  specialists decided {decided} candidates")
        specialists.refresh_from_db()
        return reviews.freeze_review(
            specialists, name, description="mini-Emu needles: funnel, generalists, specialists"
        )

    def _median_appeal(self, run: CurationRun) -> float:
        kept = [o.candidate for o in run.outcomes.filter(kept=True).select_related("candidate__collection")[:300]]
        scores = [
            appeal_score(np.asarray(training_services.funnel_candidate(c).open_image().convert("RGB"))) for c in kept
        ]
        return float(np.median(scores)) if scores else 0.5

    def random_dataset(self, size: int) -> CuratedDataset:
        """The uncurated control: the same number of pool images, chosen at random."""
        name = f"mini-emu-random-{self.scale_name}"
        existing = CuratedDataset.objects.filter(name=name).first()
        if existing:
            return existing
        pool = self.collection(f"mini-emu-pool-{self.scale_name}", self.scale.pool, corpus.POOL_SEED_BASE)
        rows = list(pool.candidates.order_by("pk"))
        chosen = random.Random(0).sample(rows, min(size, len(rows)))
        return training_services.freeze_curated_dataset(
            name,
            [(row, row.caption) for row in chosen],
            description="mini-Emu control: random pool images, no curation",
        )

    # --- 2. quality-tuning ------------------------------------------------------------------------------

    def tune(self, dataset: CuratedDataset) -> QualityTuningRun:
        base = self.base_model()
        run = QualityTuningRun.objects.filter(dataset=dataset, base_model=base).order_by("-pk").first()
        if run is None:
            run = training_services.create_run(
                base,
                dataset,
                max_steps=self.scale.tune_steps,
                checkpoint_every=self.scale.checkpoint_every,
                validation_prompts=[corpus.evaluation_prompts(1)[0][0]],
                validation_seeds=[0],
                **TUNING,
            )
        if run.status != "finished":
            self.log(
                f"  quality-tuning {base.name} on {dataset.name} ({dataset.image_count} images, {self.scale.tune_steps} steps)"
            )
            outcome = training_services.execute_run(run.pk)
            run.refresh_from_db()
            if run.status != "finished":
                raise RuntimeError(f"quality-tuning run {run.pk}: {outcome}: {run.error}")
        return run

    def launch(self, campaign: Campaign) -> Campaign:
        if campaign.status == Campaign.Status.DRAFT:
            annotation_services.launch_campaign(campaign)
        campaign.refresh_from_db()
        if campaign.status == Campaign.Status.LAUNCHING:
            generation_services.generate_batch_in_process(campaign.generation_batch)
            annotation_services.finish_launch(campaign.pk)
        campaign.refresh_from_db()
        return campaign

    def pick_checkpoint(self, run: QualityTuningRun):
        prompts = self.prompt_set(
            "mini-emu-checkpoint-prompts", self.scale.checkpoint_prompts, corpus.EVAL_SEED_BASE + 3_000_000
        )
        campaign = training_services.create_checkpoint_campaign(run, prompt_set=prompts, seeds=(0,), gold_share=0)
        campaign = self.launch(campaign)
        if campaign.status == Campaign.Status.LIVE:
            self.simulate_raters(campaign, max(6, self.scale.raters // 2), careless_share=0.0)
        rows = training_selectors.checkpoint_win_rates(run)
        best = max(rows, key=lambda row: (row["win_rate"] or 0.0, -row["step"]))
        self.log("  checkpoint win rates: " + ", ".join(f"step {r['step']}: {r['win_rate']}" for r in rows))
        return run.checkpoints.get(step=best["step"])

    # --- 3. evaluation -------------------------------------------------------------------------------------

    def campaign(self, name: str, models: list[TextToImageModel]) -> Campaign:
        name = f"{name}-{self.scale_name}"
        existing = Campaign.objects.filter(name=name).first()
        if existing:
            return existing
        return annotation_services.create_campaign(
            name=name,
            models=models,
            prompt_set=self.prompt_set(),
            seeds=generation_services.parse_seeds(self.scale.seeds),
            quota_per_rater=self.scale.quota,
            gold_share=self.scale.gold_share,
            rater_title="Which picture is better?",
            # Simulated raters answer as fast as the machine serves them; the speeder check is for people.
            speeder_seconds=0,
        )

    def evaluate(self, campaign: Campaign) -> dict:
        campaign = self.launch(campaign)
        if campaign.status == Campaign.Status.LIVE:
            totals = self.simulate_raters(campaign)
            self.log(f"  {campaign.name}: {totals['raters']} simulated raters, {totals['votes']} votes")
        return {
            "campaign": campaign.name,
            "win_rates": analysis_services.campaign_win_rates(campaign),
            "ground_truth": ground_truth(campaign),
        }

    def tuned_model(self, name: str, dataset: CuratedDataset, pick_by_raters: bool) -> TextToImageModel:
        existing = TextToImageModel.objects.filter(name=name).first()
        if existing:
            return existing
        run = self.tune(dataset)
        # The control takes its last step: choosing its step by raters would be curation by the back door.
        checkpoint = self.pick_checkpoint(run) if pick_by_raters else run.checkpoints.order_by("-step").first()
        return training_services.register_checkpoint(checkpoint, name=name)

    def reproduce(self) -> dict:
        self.log(f"mini-Emu loop at scale {self.scale_name}: {asdict(self.scale)}")
        base = self.base_model()
        self.log("1. Curation")
        needles = self.needles()
        control = self.random_dataset(needles.image_count)
        self.log("2. Quality-tuning")
        tuned = self.tuned_model(f"mini-emu-tuned-{self.scale_name}", needles, pick_by_raters=True)
        random_model = self.tuned_model(f"mini-emu-random-{self.scale_name}", control, pick_by_raters=False)
        self.log("3. Evaluation")
        results = {
            "tuned_vs_base": self.evaluate(self.campaign("mini-emu-tuned-vs-base", [base, tuned])),
            "random_vs_base": self.evaluate(self.campaign("mini-emu-random-vs-base", [base, random_model])),
            "base_vs_base": self.evaluate(self.campaign("mini-emu-null", [base, self.null_model()])),
        }
        return results


def ground_truth(campaign: Campaign) -> dict:
    """The hidden appeal and oracle faithfulness of each model's campaign images: what the raters' verdict should track."""
    from PIL import Image

    per_model: dict[str, dict[str, list[float]]] = {}
    seen = set()
    for item in campaign.items.regular().select_related("image_a__model", "image_b__model", "image_a__prompt"):
        for image in (item.image_a, item.image_b):
            if image.pk in seen:
                continue
            seen.add(image.pk)
            with image.file.open("rb") as handle:
                pixels = np.asarray(Image.open(handle).convert("RGB"))
            scores = per_model.setdefault(image.model.name, {"appeal": [], "faithfulness": []})
            scores["appeal"].append(appeal_score(pixels))
            scores["faithfulness"].append(faithfulness(pixels, image.prompt.text))
    return {
        name: {k: round(float(np.mean(v)), 4) for k, v in s.items()} | {"images": len(s["appeal"])}
        for name, s in per_model.items()
    }


def summary_table(results: dict) -> str:
    """The Emu table for the world: per campaign and criterion, B's win rate over A with its interval, and ground truth."""
    lines = [
        "campaign | criterion | B vs A | items won / tied / lost by B | win rate | 95% interval | "
        "ties as half a win (95% interval) | hidden appeal A / B | oracle faithfulness A / B",
        "---|---|---|---|---|---|---|---|---",
    ]
    for key, result in results.items():
        truth = result["ground_truth"]
        for row in result["win_rates"]:
            a, b = row["model_a"], row["model_b"]
            ta, tb = truth.get(a, {}), truth.get(b, {})
            lines.append(
                f"{key} | {row['criterion']} | {b} vs {a} | {row['wins']} / {row['ties']} / {row['losses']} | "
                f"{row['win_rate_text']} | {row['interval_text']} | "
                f"{row['half_ties_text']} ({row['half_ties_interval_text']}) | "
                f"{ta.get('appeal', '?')} / {tb.get('appeal', '?')} | {ta.get('faithfulness', '?')} / {tb.get('faithfulness', '?')}"
            )
    return "\n".join(lines) + "\n"
