"""Names people give to things: one rule and one wording, raised as the calling app's error on its field."""

from __future__ import annotations

import pytest

from core.errors import ServiceError
from core.names import check_slug_name


class AppError(ServiceError):
    pass


def test_a_valid_name_comes_back_without_its_spaces():
    assert check_slug_name("  sd15-base_2 ", "model") == "sd15-base_2"


@pytest.mark.parametrize("name", ["", "   ", None, ["a"]])
def test_an_empty_name_is_refused_with_what_to_name(name):
    with pytest.raises(AppError, match=r"^Give the dataset a name\.$") as refused:
        check_slug_name(name, "dataset", error=AppError, field="name")
    assert refused.value.field == "name"


def test_with_an_example_the_refusals_show_it():
    with pytest.raises(
        AppError, match=r"^Give the model a name: letters, digits, hyphens and underscores, e\.g\. sd15-base\.$"
    ):
        check_slug_name(" ", "model", error=AppError, example="sd15-base")
    with pytest.raises(
        AppError,
        match=r"^'sd 1\.5' is not a valid name: use letters, digits, hyphens and underscores, e\.g\. sd15-base\.$",
    ):
        check_slug_name("sd 1.5", "model", error=AppError, example="sd15-base")


def test_a_name_with_other_characters_or_too_long_is_refused():
    with pytest.raises(
        ServiceError, match=r"^'a/b' is not a valid name: use letters, digits, hyphens and underscores\.$"
    ):
        check_slug_name("a/b", "review")
    with pytest.raises(ServiceError, match=r"^The name is 6 characters long; use at most 5 characters\.$"):
        check_slug_name("abcdef", "model", max_length=5)
