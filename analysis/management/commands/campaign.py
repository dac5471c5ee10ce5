"""manage.py campaign SUBCOMMAND: the researcher's campaign operations from a terminal.

Same validation and services as the researcher pages and the JSON API; every
refusal is a CommandError carrying the service's message. It belongs to analysis, which may read annotation, because
``status`` shows the live win rates beside annotation's progress (as the campaign page does).
"""

import shlex

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from analysis import services as analysis_services
from analysis.services import campaign_win_rates
from annotation import selectors, services
from annotation.forms import CampaignForm
from annotation.models import Campaign, Criterion
from core.api_tokens import ApiTokenError, issue_api_token, token_max_age_days
from core.polling import Waiting, wait_until
from generation import selectors as generation_selectors

# Seconds without visible progress before `launch --wait` suggests starting a worker.
NO_PROGRESS_HINT_SECONDS = 60
WORKER_HINT = "Start one with: celery -A evalsite worker -Q generation,default -c 1"


class Command(BaseCommand):
    help = "Create, launch, pause, resume, close and watch comparison campaigns; print invite links and API tokens."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        create = sub.add_parser("create", help="create a draft campaign")
        create.add_argument("--name", required=True)
        create.add_argument(
            "--models", nargs="+", required=True, metavar="MODEL", help="two or more registered models, model A first"
        )
        create.add_argument("--pairing", choices=Campaign.Pairing.values, default=Campaign.Pairing.ALL_PAIRS)
        create.add_argument("--baseline", metavar="MODEL", help="with --pairing vs_baseline")
        create.add_argument("--prompt-set", required=True)
        create.add_argument("--seeds", required=True, help="e.g. '0-3, 10'")
        create.add_argument("--criteria", nargs="+", choices=Criterion.values, help="default: both of Emu's criteria")
        create.add_argument(
            "--gold-share", type=float, help="share of each rater's tasks that are gold (0 turns gold off)"
        )
        create.add_argument("--gold-min-answers", type=int, help="gold answers needed before a rater can be excluded")
        create.add_argument("--gold-min-accuracy", type=float, help="raters below this gold accuracy are excluded")
        create.add_argument("--quota", type=int, help="tasks per rater, gold included; 0: no limit")
        create.add_argument("--lease", type=int, help="seconds before an unanswered task returns to the pool")
        create.add_argument("--completion-url")
        create.add_argument("--rater-title")
        create.add_argument(
            "--consent-text",
            metavar="TEXT",
            help="what raters agree to (first paragraph shown, the rest folded away); default: Needle's short text",
        )
        create.add_argument("--consent-file", metavar="PATH", help="the consent text from a UTF-8 file")
        create.add_argument("--contact", help="who raters can write to about the study")
        create.add_argument(
            "--screen-out-url",
            help="where raters excluded by quality control go ({code}: the screen-out code)",
        )
        create.add_argument(
            "--speeder-seconds",
            type=float,
            metavar="S",
            help="flag raters whose median time between answers is below S seconds (default 1; 0 turns it off)",
        )
        create.add_argument("--exclude-speeders", action="store_true", help="exclude flagged speeders automatically")
        create.add_argument(
            "--stop-when-decided",
            action="store_true",
            help="close by itself once the anytime-valid interval of the first criterion excludes 50%% for every pair",
        )
        create.add_argument(
            "--decision-width",
            type=float,
            metavar="W",
            help="with --stop-when-decided: also stop once that interval is at most W wide (e.g. 0.1)",
        )
        create.add_argument(
            "--human-share",
            type=float,
            metavar="F",
            help="fraction of the prompts humans vote on, drawn at random at launch (default 1: all)",
        )
        create.add_argument(
            "--pair-selection",
            choices=Campaign.PairSelection.values,
            help="adaptive: the pairs that most narrow the ranking get votes first (all pairs, 3+ models); "
            "default uniform",
        )

        launch = sub.add_parser("launch", help="generate the campaign's images and go live when they are ready")
        launch.add_argument("name")
        launch.add_argument(
            "--wait", action="store_true", help="wait until the campaign is live (or the launch failed)"
        )
        launch.add_argument(
            "--timeout", type=float, default=0, help="with --wait: give up after this many seconds (0: never)"
        )

        for verb, text in (
            ("pause", "stop handing out tasks"),
            ("resume", "go live again"),
            ("close", "stop accepting votes for good"),
        ):
            sub.add_parser(verb, help=text).add_argument("name")

        invite = sub.add_parser("invite", help="create an invite link and print it, Prolific's placeholders appended")
        invite.add_argument("name")
        invite.add_argument("--label", default="")
        invite.add_argument("--max-raters", type=int, default=0, help="0: no limit")
        invite.add_argument(
            "--reuse",
            action="store_true",
            help="print the campaign's active link with this label and rater limit if there is one (create it otherwise)",
        )
        invite.add_argument(
            "--plain",
            action="store_true",
            help="print the link without Prolific's placeholders: each browser that opens it is its own anonymous rater",
        )
        invite.add_argument(
            "--base-url",
            default=settings.NEEDLE_BASE_URL,
            help="the site's public address, e.g. https://needle.example.org",
        )

        sub.add_parser("status", help="progress, win rates and raters").add_argument("name")
        sub.add_parser(
            "decide",
            help="stop when decided: record what the anytime-valid interval decided, close the campaign if all is",
        ).add_argument("name")

        token = sub.add_parser("api-token", help="print a bearer token for the JSON API (staff accounts only)")
        token.add_argument("username")

    def handle(self, *args, subcommand, **options):
        handler = getattr(self, "handle_" + subcommand.replace("-", "_"))
        try:
            handler(**options)
        except services.AnnotationError as exc:
            raise CommandError(str(exc)) from None

    # --- Subcommands ------------------------------------------------------------------------

    def handle_create(self, **o):
        payload = {
            "name": o["name"],
            "models": o["models"],
            "pairing": o["pairing"],
            "baseline": o["baseline"],
            "prompt_set": o["prompt_set"],
            "seeds": o["seeds"],
            "criteria": o["criteria"],
            "gold_share": o["gold_share"],
            "gold_min_answers": o["gold_min_answers"],
            "gold_min_accuracy": o["gold_min_accuracy"],
            "quota_per_rater": o["quota"],
            "lease_seconds": o["lease"],
            "completion_url": o["completion_url"],
            "rater_title": o["rater_title"],
            "consent_text": self._consent_text(o["consent_text"], o["consent_file"]),
            "contact": o["contact"],
            "screen_out_url": o["screen_out_url"],
            "speeder_seconds": o["speeder_seconds"],
            "exclude_speeders": o["exclude_speeders"] or None,
            "stop_when_decided": o["stop_when_decided"] or None,
            "decision_width": o["decision_width"],
            "human_share": o["human_share"],
            "pair_selection": o["pair_selection"],
        }
        form = CampaignForm.from_payload({k: v for k, v in payload.items() if v is not None})
        campaign = form.create() if form.is_valid() else None
        if campaign is None:
            raise CommandError(form.error_text())
        pairs = campaign.model_pairs()
        criteria = list(campaign.criteria.all())
        keys = campaign.prompt_set.prompts.count() * len(campaign.seeds)
        self.stdout.write(
            f"Created draft campaign {campaign.name!r} (id {campaign.pk}): "
            f"{', '.join(f'{a.name} vs {b.name}' for a, b in pairs)}; "
            f"{', '.join(f'{c.get_criterion_display()} (k={c.votes_per_item})' for c in criteria)}; "
            f"{keys * len(pairs) * len(criteria)} comparisons. "
            f"Launch it with: manage.py campaign launch {campaign.name!r}"
        )

    @staticmethod
    def _consent_text(text, path):
        if text is not None and path is not None:
            raise CommandError("Give --consent-text or --consent-file, not both.")
        if path is None:
            return text
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read the consent file {path}: {exc}") from None

    def handle_launch(self, name, wait, timeout, **o):
        campaign = self._campaign(name)
        services.launch_campaign(campaign)
        self.stdout.write(
            f"Launching {campaign.name!r}: its images are queued on the 'generation' queue; it goes live when they exist."
        )
        if wait:
            self._wait_for_launch(campaign, timeout)

    def handle_pause(self, name, **o):
        self._act(name, "pause")

    def handle_resume(self, name, **o):
        self._act(name, "resume")

    def handle_close(self, name, **o):
        self._act(name, "close")

    def handle_invite(self, name, label, max_raters, base_url, reuse, plain, **o):
        campaign = self._campaign(name)
        if not base_url.startswith(("http://", "https://")):
            raise CommandError("--base-url must start with http:// or https://, e.g. https://needle.example.org")
        if reuse:
            link = services.invite_link_for(campaign, label=label, max_raters=max_raters)
        else:
            link = services.create_invite_link(campaign, label=label, max_raters=max_raters)
        about = f"Invite link {link.pk} for {campaign.name!r}{f' ({label})' if label else ''}"
        if plain:
            self.stderr.write(f"{about}; each browser that opens it is a new anonymous rater:")
            self.stdout.write(selectors.join_url(base_url, link))
        else:
            self.stderr.write(f"{about}; give this URL to Prolific (it fills in the placeholders):")
            self.stdout.write(selectors.invite_url(base_url, link))

    def handle_status(self, name, **o):
        campaign = self._campaign(name)
        p = selectors.campaign_progress(campaign)
        raters = selectors.rater_quality(campaign)
        out = self.stdout.write
        out(f"{campaign.name} (id {campaign.pk}): {campaign.status}")
        if campaign.launch_error:
            out(f"Launch error: {campaign.launch_error}")
        if campaign.status == Campaign.Status.LAUNCHING and campaign.generation_batch_id:
            images = generation_selectors.batch_progress(campaign.generation_batch)
            out(f"Images: {images.done} / {images.total}")
        out(f"Votes: {p.votes} / {p.votes_needed} ({p.percent}%); comparisons complete: {p.complete_items} / {p.items}")
        for c in p.per_criterion:
            out(f"  {c.label}: {c.votes} / {c.votes_needed} votes, {c.complete_items} / {c.items} complete")
        out(
            f"Raters: {len(raters)} joined, {sum(r.excluded for r in raters)} excluded, {sum(r.completed for r in raters)} finished; "
            f"{p.active_raters} active in the last 10 minutes; {p.open_leases} tasks on screen"
        )
        if p.projected_finish:
            out(f"Projected finish: {p.projected_finish:%Y-%m-%d %H:%M %Z} (at the last 30 minutes' rate)")
        out("Win rates (item level: each comparison's majority; 95% prompt-clustered bootstrap BCa interval):")
        out(f"  {'criterion':<18} {'A':<16} {'B':<16} {'B wins':>7} {'ties':>5} {'A wins':>7}   B's win rate")
        for w in campaign_win_rates(campaign):
            interval = f" [{w['interval_text']}]" if w["low"] is not None else ""
            out(
                f"  {w['criterion_label']:<18} {w['model_a']:<16} {w['model_b']:<16} {w['wins']:>7} {w['ties']:>5} "
                f"{w['losses']:>7}   {w['win_rate_text']}{interval}"
                + (
                    f"; ties as half a win {w['half_ties_text']} [{w['half_ties_interval_text']}]"
                    if w["low"] is not None
                    else ""
                )
            )
        out("Anytime-valid 95% intervals (ties as half; valid however often you look):")
        for w in campaign_win_rates(campaign):
            out(
                f"  {w['criterion_label']:<18} {w['model_a']:<16} {w['model_b']:<16} {w['sequence_text']} over "
                f"{w['sequence_prompts']} complete prompts"
                + (f"; {w['sequence_decision_text']}" if w["sequence_decision_text"] else "")
            )
        for d in analysis_services.decision_summaries(campaign):
            out(f"Decided: {d.sentence}")
        out(f"Full report: manage.py report {shlex.quote(campaign.name)} --format html --out report.html")

    def handle_decide(self, name, **o):
        campaign = self._campaign(name)
        outcome = analysis_services.check_decision(campaign.pk)
        self.stdout.write(f"{campaign.name}: {outcome}")
        for d in analysis_services.decision_summaries(campaign):
            self.stdout.write(f"  {d.sentence}")

    def handle_api_token(self, username, **o):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"There is no account named {username!r}.")
        try:
            token = issue_api_token(user)
        except ApiTokenError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(
            f"API token for {username}, valid {token_max_age_days()} days (changing the password revokes it). "
            "Send it as: Authorization: Bearer <token>"
        )
        self.stdout.write(token)

    # --- Helpers ----------------------------------------------------------------------------

    def _campaign(self, name: str) -> Campaign:
        campaign = Campaign.objects.filter(name=name).first()
        if campaign is None and name.isdigit():
            campaign = Campaign.objects.filter(pk=int(name)).first()
        if campaign is None:
            known = ", ".join(repr(n) for n in Campaign.objects.values_list("name", flat=True)[:20]) or "none yet"
            raise CommandError(f"There is no campaign named {name!r} (known: {known}).")
        return campaign

    def _act(self, name: str, action: str) -> None:
        campaign = self._campaign(name)
        services.apply_campaign_action(campaign, action)
        self.stdout.write(f"{campaign.name}: {campaign.status}")

    def _wait_for_launch(self, campaign: Campaign, timeout: float) -> None:
        bar = None

        def step(waiting: Waiting) -> bool:
            nonlocal bar
            campaign.refresh_from_db()
            if campaign.status != Campaign.Status.LAUNCHING:
                return True
            images = generation_selectors.batch_progress(campaign.generation_batch)
            if bar is None:
                bar = tqdm(total=images.total, unit="img", desc=f"{campaign.name}: images", file=self.stdout._out)
            if images.done != bar.n:
                bar.update(images.done - bar.n)
                waiting.progressed()
            elif waiting.hint_due():
                if images.complete:
                    # The images exist; going live is the finish_launch task's job, on the 'default' queue.
                    bar.write(
                        f"The images are ready but the campaign is not live yet. Is a worker consuming the 'default' queue? {WORKER_HINT}"
                    )
                else:
                    bar.write(
                        f"No new images for {NO_PROGRESS_HINT_SECONDS} s. Is a worker consuming the 'generation' queue? {WORKER_HINT}"
                    )
            if waiting.timed_out():
                raise CommandError(
                    f"Gave up waiting after {timeout:.0f}s: {campaign.name!r} is still launching ({images.done}/{images.total} images) "
                    f"and the workers go on. Check with: manage.py campaign status {campaign.name!r}"
                )
            return False

        try:
            wait_until(step, interval=0.5, timeout=timeout, hint_after=NO_PROGRESS_HINT_SECONDS)
        finally:
            if bar is not None:
                bar.close()
        if campaign.status == Campaign.Status.DRAFT:
            raise CommandError(campaign.launch_error or "The launch failed and the campaign is back to draft.")
        regular = campaign.items.regular().count()
        gold = campaign.items.gold().count()
        self.stdout.write(f"{campaign.name!r} is {campaign.status}: {regular} comparisons and {gold} gold items.")
