"""manage.py judge_campaign CAMPAIGN: the aesthetic head scores every pair of a campaign, for AI-assisted win rates.

The judge's score of a pair is P(raters find B more appealing) = 1 / (1 + exp(-(aesthetic B - aesthetic A))), a
logistic of the two images' aesthetic scores (training.services.judge_scores). The report and the campaign page then
show the prediction-powered win rate beside the humans-only one. ``--queue`` hands the work to a training worker.
"""

from django.core.management.base import BaseCommand, CommandError

from analysis import services as analysis_services
from core.task_queue import enqueue_on_commit
from training import services


class Command(BaseCommand):
    help = "Score every pair of a campaign with an aesthetic head (the automatic judge of AI-assisted win rates)."

    def add_arguments(self, parser):
        parser.add_argument("campaign", help="the campaign's name or id")
        parser.add_argument("--head", help="aesthetic head file (LAION layout); default NEEDLE_JUDGE_HEAD_PATH")
        parser.add_argument("--clip", help="its open_clip model (a folder or file); default NEEDLE_JUDGE_CLIP_PATH")
        parser.add_argument("--clip-name", default="", help="open_clip architecture name, if the folder does not say")
        parser.add_argument("--rescore", action="store_true", help="score pairs scored before again")
        parser.add_argument(
            "--queue",
            action="store_true",
            help="queue it for a training worker (the site's judge settings) instead of scoring here",
        )

    def handle(self, *args, campaign, head, clip, clip_name, rescore, queue, **options):
        try:
            found = analysis_services.find_campaign(campaign)
        except analysis_services.ReportError as exc:
            raise CommandError(str(exc)) from None
        if queue:
            if head or clip or clip_name or rescore:
                raise CommandError("--queue scores with the site's judge settings; drop --head, --clip and --rescore.")
            enqueue_on_commit("training.tasks.score_campaign_pairs", found.pk)
            self.stdout.write(f"Queued: the pairs of {found.name!r} on the 'training' queue.")
            return
        try:
            scored = services.score_campaign_pairs(
                found, head_path=head, clip_path=clip, clip_name=clip_name, rescore=rescore
            )
        except services.TrainingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{found.name}: {scored} pair(s) scored"
            + ("" if scored else " (every pair was scored before; --rescore scores them again)")
        )
