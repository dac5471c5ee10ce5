from core.errors import CONFLICT, INVALID, ServiceError


def test_a_refusal_carries_its_field_and_code_into_the_api_answer():
    assert ServiceError("Give a name.", field="name").as_json() == {
        "error": "Give a name.",
        "field": "name",
        "code": INVALID,
    }
    conflict = ServiceError("A closed campaign cannot become live.", code=CONFLICT)
    assert conflict.as_json() == {"error": "A closed campaign cannot become live.", "field": None, "code": "conflict"}


def test_several_problems_travel_together_each_under_its_field():
    error = ServiceError("Two settings are wrong.", errors=[("width", "Too wide."), ("steps", "Too many.")])
    assert error.field == "width"
    assert error.as_json()["errors"] == [
        {"field": "width", "message": "Too wide."},
        {"field": "steps", "message": "Too many."},
    ]


def test_a_subclass_names_its_own_kind_of_refusal():
    class Ended(ServiceError):
        code = "participation_ended"

    assert Ended("This study has ended for you.").as_json()["code"] == "participation_ended"
