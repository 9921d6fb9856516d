from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("models_app", "0004_inference_nodes")]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="max_concurrent",
            field=models.PositiveIntegerField(
                blank=True, help_text="Requests in flight at once; empty: unlimited.", null=True,
                verbose_name="concurrent requests",
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="lane",
            field=models.CharField(
                choices=[("interactive", "Interactive"), ("batch", "Batch")], default="interactive",
                help_text="Interactive requests take free slots before batch ones; batch work is aged so it never starves.",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="load_failures",
            field=models.PositiveIntegerField(
                default=0, editable=False, help_text="Failed loads in a row; the server retries after a back-off."
            ),
        ),
        migrations.AddField(
            model_name="llmmodel", name="last_load_error", field=models.TextField(blank=True, editable=False)
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="load_retry_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="lane",
            field=models.CharField(
                choices=[("interactive", "Interactive"), ("batch", "Batch")], db_index=True, default="interactive",
                max_length=16,
            ),
        ),
    ]
