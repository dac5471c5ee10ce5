"""The human curation stages moved from annotation to training without touching a row (annotation/0011, training/0004).

A database made before the move keeps its stages, their decisions and every reviewer's permission; and the move
can be undone.
"""

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from training.models import CurationDecision, CurationReview
from training.tests.test_review_stages import make_funnel

BEFORE_THE_MOVE = [("annotation", "0010_assignment_rater_recent"), ("training", "0003_checkpoint_campaign")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest():
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_stages_decisions_and_reviewer_grants_survive_the_move_and_its_undoing(tmp_path):
    run = make_funnel(tmp_path / "photos", [(5.0, 0.3), (6.0, 0.3)])  # funnel tables are not part of the move
    candidate = run.outcomes.filter(kept=True).first().candidate
    try:
        old = migrate(BEFORE_THE_MOVE)
        OldReview, OldDecision = (
            old.get_model("annotation", "CurationReview"),
            old.get_model("annotation", "CurationDecision"),
        )
        review = OldReview.objects.create(name="gen-before", stage="generalist", funnel_run_id=run.pk)
        OldDecision.objects.create(
            review=review, candidate_id=candidate.pk, position=1, keep=True, caption="kept before"
        )
        # The permission as a database made before the move holds it: on annotation's content type.
        old_type = ContentType.objects.get(app_label="annotation", model="curationreview")
        reviewer = User.objects.create_user("reviewer")
        reviewer.user_permissions.add(Permission.objects.get(content_type=old_type, codename="review_curation"))
        assert not ContentType.objects.filter(app_label="training", model="curationreview").exists()
    finally:
        migrate(latest())

    moved = CurationReview.objects.get(name="gen-before")
    assert moved.pk == review.pk and moved.funnel_run_id == run.pk
    assert list(CurationDecision.objects.filter(review=moved).values_list("candidate_id", "keep", "caption")) == [
        (candidate.pk, True, "kept before")
    ]
    assert User.objects.get(pk=reviewer.pk).has_perm("training.review_curation")
    assert not ContentType.objects.filter(
        app_label="annotation", model__in=["curationreview", "curationdecision"]
    ).exists()
