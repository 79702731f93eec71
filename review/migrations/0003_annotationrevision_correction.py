# A correction drawn in the viewer over a prediction: flagged on its lineage row, with the volumes
# measured from its label map when it was saved (issue 20).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("review", "0002_reviewanalysis_job_fields"),
    ]

    operations = [
        migrations.AddField(
            model_name="annotationrevision",
            name="correction",
            field=models.BooleanField(
                default=False,
                help_text="Drawn over ``prediction`` with the viewer's drawing tools: volumes, CSVs and charts use the newest correction of a prediction that no reviewer rejected (``review.corrections``).",
            ),
        ),
        migrations.AddField(
            model_name="annotationrevision",
            name="volumes",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="A correction's structures measured when it was saved: canonical id -> [voxels, mm3].",
            ),
        ),
        migrations.AlterField(
            model_name="annotationrevision",
            name="version",
            field=models.PositiveIntegerField(
                default=1, help_text="1 for a first annotation, +1 per replacement or per saved correction."
            ),
        ),
    ]
