import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from generation import services
from generation.models import PromptSet, TextToImageModel
from generation.tiny_pipelines import save_tiny_pipeline

DEMO_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "demo_prompts.tsv"
# Two tiny SD-shaped pipelines with different random weights stand in for a
# base model and its quality-tuned version until the mini-Emu world exists.
DEMO_MODELS = {"tiny-base": 0, "tiny-tuned": 1}


class Command(BaseCommand):
    help = "Prepare the demo (idempotent): a researcher login, two tiny local models and the demo prompt set."

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
            services.register_model(name=name, pipeline_path=str(path), steps=20, guidance_scale=5.0, description="tiny random-weight demo model")
            self.stdout.write(f"Registered {name} from {path}")
        if not PromptSet.objects.filter(name="demo").exists():
            _, parsed = services.import_prompt_set(name="demo", data=DEMO_PROMPTS.read_bytes(), filename=DEMO_PROMPTS.name)
            self.stdout.write(f"Imported {len(parsed.prompts)} demo prompts")
        self.stdout.write(f"Researcher login: {username} / {password}")

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
