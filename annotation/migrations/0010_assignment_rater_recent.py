from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0009_screen_out_and_speeders"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(fields=["rater", "campaign", "id"], name="assignment_rater_recent"),
        ),
    ]
