"""Small live campaigns for the issue-13 tests: 12 prompts x 1 seed, visual appeal only, k = 1, no gold."""

from __future__ import annotations

from annotation import services as annotation_services
from generation import services as generation_services

PROMPTS = 12  # all-B votes decide at the 10th prompt (a hedged-capital sequence needs about 10 unanimous prompts)


def twelve_prompt_set():
    data = "Prompt\tCategory\n" + "".join(f"prompt number {i}\tCat {i % 3}\n" for i in range(PROMPTS))
    prompt_set, _ = generation_services.import_prompt_set(name="twelve", data=data.encode(), filename="twelve.tsv")
    return prompt_set


def make_live(two_models, prompt_set, name="decide", **settings):
    """A live campaign: 12 prompts x 1 seed, visual appeal only, one rater per comparison (k=1), no gold."""
    campaign = annotation_services.create_campaign(
        name=name,
        models=two_models,
        prompt_set=prompt_set,
        seeds=[0],
        gold_share=0,
        criteria={"visual_appeal": {"votes_per_item": 1}},
        **settings,
    )
    batch = annotation_services.generation_batch_for(campaign)
    generation_services.generate_batch_in_process(batch)
    annotation_services.build_items(campaign, batch)
    campaign.generation_batch = batch  # as a launch records it
    campaign.save(update_fields=["generation_batch"])
    annotation_services.set_status(campaign, "live")
    return campaign


def vote(campaign, rater, prefer) -> int:
    """The rater answers every task; ``prefer(prompt_id)`` says which model ("a" or "b") they pick."""
    n = 0
    while tasks_ := annotation_services.open_tasks(campaign, rater):
        for task in tasks_:
            a_side, b_side = ("left", "right") if task.a_on_left else ("right", "left")
            side = a_side if prefer(task.item.image_a.prompt_id) == "a" else b_side
            annotation_services.submit_vote(rater, task.token, side, seconds_on_task=2.0)
            n += 1
    return n
