import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from annotation import services as annotation_services
from annotation.models import Campaign
from generation import services
from generation.models import PromptSet, TextToImageModel
from generation.tiny_pipelines import save_tiny_pipeline

DEMO_PROMPTS = (
    Path(__file__).resolve().parents[3] / "generation" / "data" / "demo_prompts.tsv"
)  # prompt import's sample too
# Two tiny SD-shaped pipelines with different random weights stand in for a
# base model and its quality-tuned version until the mini-Emu world exists.
DEMO_MODELS = {"tiny-base": 0, "tiny-tuned": 1}
# The demo campaign over scripts/demo.sh's images (the same seeds), both Emu criteria. 30 tasks at 20% gold give
# every rater 6 gold answers, so gold can exclude a careless rater from their 4th gold answer on (20 tasks at 10%
# gave 2, below the 4 needed: gold could never fire). Created through the service, which refuses settings where it
# could not.
DEMO_CAMPAIGN = {
    "name": "demo",
    "seeds": [0, 1, 2, 3],
    "quota_per_rater": 30,
    "gold_share": 0.2,
    "gold_min_answers": 4,
    "rater_title": "Which picture do you prefer?",
}


class Command(BaseCommand):
    help = (
        "Prepare the demo (idempotent): a researcher login, two tiny local models, the demo prompt set and the demo "
        "campaign (a draft; scripts/demo.sh launches it once its images exist)."
    )

    def handle(self, *args, **options):
        # The settings create var/ only for the SQLite default; the demo keeps its login and models there whatever
        # the database (a fresh clone pointed at PostgreSQL has no var/ yet).
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        username, password = self._researcher()
        for name, seed in DEMO_MODELS.items():
            if TextToImageModel.objects.filter(name=name).exists():
                continue
            path = settings.VAR_DIR / "models" / name
            if not (path / "model_index.json").exists():
                save_tiny_pipeline(path, seed=seed, kind="sd")
            services.register_model(
                name=name,
                pipeline_path=str(path),
                steps=20,
                guidance_scale=5.0,
                description="tiny random-weight demo model",
            )
            self.stdout.write(f"Registered {name} from {path}")
        if not PromptSet.objects.filter(name="demo").exists():
            _, parsed = services.import_prompt_set(
                name="demo", data=DEMO_PROMPTS.read_bytes(), filename=DEMO_PROMPTS.name
            )
            self.stdout.write(f"Imported {len(parsed.prompts)} demo prompts")
        self._campaign(username)
        self.stdout.write(f"Researcher login: {username} / {password}")

    def _campaign(self, username):
        if Campaign.objects.filter(name=DEMO_CAMPAIGN["name"]).exists():
            return
        campaign = annotation_services.create_campaign(
            models=[TextToImageModel.objects.get(name=name) for name in DEMO_MODELS],
            prompt_set=PromptSet.objects.get(name="demo"),
            created_by=get_user_model().objects.get(username=username),
            **DEMO_CAMPAIGN,
        )
        self.stdout.write(
            f"Created the draft campaign {campaign.name!r}: {campaign.quota_per_rater} tasks per rater, "
            f"{campaign.gold_share:.0%} gold"
        )

    def _researcher(self):
        login_file = settings.VAR_DIR / "demo-login.txt"
        User = get_user_model()
        if login_file.exists() and User.objects.filter(username="researcher").exists():
            return "researcher", login_file.read_text().strip()
        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username="researcher", defaults={"email": "researcher@example.org"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        login_file.write_text(password + "\n")
        login_file.chmod(0o600)
        return "researcher", password
