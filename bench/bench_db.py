"""The benchmarks' database: re-created from nothing, then filled with a campaign's rows.

The engine never reads image files, so image rows may share one file; the HTTP benchmark gives each model its own.
"""

from __future__ import annotations


def recreate_database(url: str) -> None:
    """Drop and create the database ``url`` names (connecting to the server's ``postgres`` database to do it)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def models_prompts_images(names, prompts: int, *, file_for=lambda model: "00/00/x.png", size: int = 64):
    """(models, prompt set, prompts, {(model id, prompt id): image}) for ``names`` x ``prompts``; after django.setup()."""
    from generation.models import GeneratedImage, Prompt, PromptSet, TextToImageModel

    models = [
        TextToImageModel.objects.create(
            name=n, pipeline_path="/bench", pipeline_class="StableDiffusionPipeline", weights_fingerprint=n
        )
        for n in names
    ]
    prompt_set = PromptSet.objects.create(name="bench")
    rows = Prompt.objects.bulk_create(Prompt(prompt_set=prompt_set, position=i, text=f"p{i}") for i in range(prompts))
    images = GeneratedImage.objects.bulk_create(
        GeneratedImage(
            model=m,
            prompt=p,
            seed=0,
            parameters={},
            parameters_hash="h",
            weights_fingerprint=m.weights_fingerprint,
            file=file_for(m),
            sha256="0" * 64,
            width=size,
            height=size,
            seconds=0,
            device="cpu",
        )
        for m in models
        for p in rows
    )
    return models, prompt_set, rows, {(g.model_id, g.prompt_id): g for g in images}
