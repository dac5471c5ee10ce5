import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from generation import services
from generation.models import GeneratedImage, GenerationBatch, PromptSet, TextToImageModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def generated_batch(two_models, prompt_set):
    batch = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[0], name="pairs")
    services.generate_chunk(batch.pk, two_models[0].pk, 0)  # half done
    return batch


def test_dashboard_shows_progress_and_pairs(staff_client, generated_batch):
    page = staff_client.get(reverse("generation:batch_list")).content.decode()
    assert "pairs" in page and "4 / 8" in page and "status-created" in page  # never dispatched
    detail = staff_client.get(reverse("generation:batch_detail", args=[generated_batch.pk])).content.decode()
    assert detail.count("<img") == 4 and detail.count("pending") == 4
    data = staff_client.get(reverse("generation:progress_json"), {"id": generated_batch.pk}).json()
    assert data["batches"][0]["done"] == 4 and data["batches"][0]["per_model"][0] == {
        "model": "base",
        "done": 4,
        "total": 4,
    }


def test_batch_page_pages_through_every_key_and_tolerates_bad_page_numbers(
    staff_client, two_models, prompt_set, monkeypatch
):
    from generation import selectors

    monkeypatch.setattr(selectors, "PAIRS_PER_PAGE", 3)
    batch = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[0, 1], name="paged")  # 8 keys
    url = reverse("generation:batch_detail", args=[batch.pk])

    def rows(page):
        """The page's HTML and how many (prompt, seed) rows it shows (two pending images each: nothing generated)."""
        html = staff_client.get(url, {"page": page}).content.decode()
        return html, html.count('class="muted">pending') // 2

    seen = []
    for page, expected in [(1, 3), (2, 3), (3, 2)]:
        html, n = rows(page)
        assert n == expected and f"page {page} of 3" in html
        seen.append(html)
    assert 'rel="next"' in seen[0] and 'rel="prev"' not in seen[0] and 'rel="next"' not in seen[2]
    assert "keys 7&ndash;8 of 8" in seen[2]
    # Out of range or malformed: the nearest real page, never an error.
    assert "page 3 of 3" in rows("99")[0] and "page 1 of 3" in rows("abc")[0] and "page 1 of 3" in rows("0")[0]


def test_images_are_served_to_staff_only(client, staff_client, generated_batch):
    image = GeneratedImage.objects.first()
    url = reverse("generation:image", args=[image.sha256])
    response = staff_client.get(url)
    assert response["Content-Type"] == "image/png" and b"".join(response.streaming_content)[:4] == b"\x89PNG"
    assert staff_client.get(reverse("generation:image", args=["0" * 64])).status_code == 404
    staff_client.logout()
    assert client.get(url).status_code == 302


def test_non_staff_users_cannot_reach_the_dashboard(client):
    user = get_user_model().objects.create_user("rater", password="pw-long-enough-1")
    client.force_login(user)
    for url in [reverse("generation:batch_list"), reverse("generation:progress_json"), reverse("admin:index")]:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_import_shows_line_numbered_errors_and_imports_nothing(staff_client):
    upload = SimpleUploadedFile("bad.csv", b'prompt\nok\n""\n')
    response = staff_client.post(reverse("admin:generation_promptset_import"), {"name": "bad", "file": upload})
    assert response.status_code == 200 and "line 3: empty prompt" in response.content.decode()
    assert not PromptSet.objects.exists()
    upload = SimpleUploadedFile("good.tsv", b"Prompt\tCategory\na cat\tAnimals\na cat\tAnimals\n")
    response = staff_client.post(
        reverse("admin:generation_promptset_import"), {"name": "good", "file": upload}, follow=True
    )
    page = response.content.decode()
    assert "Imported 1 prompts" in page and "duplicate of line 2" in page
    assert PromptSet.objects.get().prompts.get().category == "Animals"


def test_admin_registers_a_model_and_reports_a_bad_path(staff_client, tiny_pipeline_dir, tmp_path):
    url = reverse("admin:generation_texttoimagemodel_add")
    form = {"name": "m", "steps": 10, "guidance_scale": 6, "scheduler": "default"}
    response = staff_client.post(url, {**form, "pipeline_path": str(tmp_path)})
    assert "no model_index.json" in response.content.decode() and not TextToImageModel.objects.exists()
    response = staff_client.post(url, {**form, "pipeline_path": str(tiny_pipeline_dir("sd", 0))})
    assert response.status_code == 302
    assert TextToImageModel.objects.get().default_parameters["steps"] == 10


def test_admin_creates_a_batch_and_refuses_bad_seeds(staff_client, two_models, prompt_set):
    url = reverse("admin:generation_generationbatch_add")
    form = {"models": [m.pk for m in two_models], "prompt_set": prompt_set.pk, "steps": 2}
    response = staff_client.post(url, {**form, "seeds": "1-x"})
    assert "Cannot read seeds" in response.content.decode() and not GenerationBatch.objects.exists()
    response = staff_client.post(url, {**form, "seeds": "0-1"})  # start_now unchecked: created, not queued
    batch = GenerationBatch.objects.get()
    assert response.status_code == 302 and batch.seeds == [0, 1] and batch.dispatched_at is None


def test_progress_json_ignores_malformed_ids(staff_client, generated_batch):
    data = staff_client.get(
        reverse("generation:progress_json") + f"?id=abc&id=-1&id={generated_batch.pk}&id=1e9"
    ).json()
    assert [b["id"] for b in data["batches"]] == [generated_batch.pk]
