import pytest

from annotation import services
from annotation.models import Rater
from generation import services as generation_services


@pytest.fixture
def live_campaign(two_models, prompt_set):
    """A live two-model campaign over 4 prompts x 5 seeds: 20 appeal items (k=5) and 20 faithfulness items (k=3).

    Its images are really generated (in this process) by the tiny pipelines.
    """
    campaign = services.create_campaign(name="c", model_a=two_models[0], model_b=two_models[1], prompt_set=prompt_set, seeds=[0, 1, 2, 3, 4])
    batch = services.generation_batch_for(campaign)
    generation_services.generate_batch_in_process(batch)
    assert services.build_items(campaign, batch) == 40
    services.set_status(campaign, "live")
    return campaign


@pytest.fixture
def make_rater():
    return lambda: Rater.objects.create()
