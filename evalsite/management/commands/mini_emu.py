"""``manage.py mini_emu``: the mini-Emu loop (curate, quality-tune, evaluate) with simulated people over HTTP."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Campaign
from evalsite import mini_emu


class Command(BaseCommand):
    help = "Run the mini-Emu loop through Needle's pages and services, or send simulated raters to a campaign."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        reproduce = sub.add_parser(
            "reproduce", help="curation, quality-tuning, checkpoint pick and the three campaigns"
        )
        reproduce.add_argument("--scale", choices=sorted(mini_emu.SCALES), default="demo")
        reproduce.add_argument("--base-url", required=True, help="where the site is served, e.g. http://127.0.0.1:8000")
        reproduce.add_argument("--out", metavar="JSON", help="write every figure here")
        raters = sub.add_parser("raters", help="send simulated raters to a live campaign through its invite link")
        raters.add_argument("campaign")
        raters.add_argument("--count", type=int, default=10)
        raters.add_argument("--seed", type=int, default=0)
        raters.add_argument("--careless-share", type=float, default=0.1)
        raters.add_argument("--base-url", required=True)

    def handle(self, *args, action, **options):
        if action == "reproduce":
            loop = mini_emu.Loop(options["base_url"], options["scale"], log=self.stdout.write)
            results = loop.reproduce()
            self.stdout.write(mini_emu.summary_table(results))
            if options["out"]:
                Path(options["out"]).write_text(json.dumps(results, indent=1, default=str) + "\n")
            return
        campaign = Campaign.objects.filter(name=options["campaign"]).first()
        if campaign is None:
            raise CommandError(f"No campaign named {options['campaign']!r}.")
        if not 1 <= options["count"] <= 1000:
            raise CommandError("--count must be between 1 and 1000.")
        loop = mini_emu.Loop(options["base_url"], "demo", log=self.stdout.write)
        totals = loop.simulate_raters(
            campaign, options["count"], seed=options["seed"], careless_share=options["careless_share"]
        )
        self.stdout.write(f"{totals['raters']} simulated raters cast {totals['votes']} votes on {campaign.name}.")
