from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("models_app", "0005_token_limits_and_lanes")]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="budget_of",
            field=models.PositiveIntegerField(
                blank=True, editable=False, null=True,
                help_text="Spends from this token's budget (a token minted by a limited token): minting never adds budget.",
            ),
        ),
    ]
