from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0008_campaign_consent_text_contact"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(fields=["rater", "campaign", "id"], name="assignment_rater_recent"),
        ),
    ]
