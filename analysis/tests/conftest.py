import pytest

from analysis.tests.small_campaigns import twelve_prompt_set


@pytest.fixture
def twelve_prompts():
    """A prompt set of 12 prompts in 3 categories, named "twelve"."""
    return twelve_prompt_set()
