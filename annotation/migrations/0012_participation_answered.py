"""Participation.answered: the rater's progress as a counter the vote statement moves, filled in from the votes."""

from django.db import migrations, models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce


def count_votes(apps, schema_editor):
    Participation = apps.get_model("annotation", "Participation")
    Vote = apps.get_model("annotation", "Vote")
    votes = (
        Vote.objects.filter(
            assignment__campaign_id=OuterRef("campaign_id"), assignment__rater_id=OuterRef("rater_id")
        )
        .order_by()
        .values("assignment__rater_id")
        .annotate(n=Count("*"))
        .values("n")
    )
    Participation.objects.update(answered=Coalesce(Subquery(votes), 0))


class Migration(migrations.Migration):
    dependencies = [("annotation", "0011_move_curation_stages")]

    operations = [
        migrations.AddField(
            model_name="participation",
            name="answered",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(count_votes, migrations.RunPython.noop),
    ]
