import django.core.validators
import django.db.models.deletion
import django.db.models.functions.text
from django.db import migrations, models

from models_app.models.aliases import ALIAS_PATTERN, default_ollama_name


def assign_ollama_names(apps, schema_editor):
    """Models registered before aliases existed get their default Ollama name, as a scan would give."""
    LLMModel = apps.get_model("models_app", "LLMModel")
    ModelAlias = apps.get_model("models_app", "ModelAlias")
    taken = {m.lower() for m in LLMModel.objects.values_list("pk", flat=True)}
    for model in LLMModel.objects.order_by("pk"):
        name = default_ollama_name(model, lambda n: n.lower() in taken)
        taken.add(name.lower())
        ModelAlias.objects.create(name=name, model=model, ollama=True)


class Migration(migrations.Migration):
    dependencies = [("models_app", "0006_token_budget_of")]

    operations = [
        migrations.CreateModel(
            name="ModelAlias",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "name",
                    models.CharField(
                        max_length=200,
                        unique=True,
                        validators=[
                            django.core.validators.RegexValidator(
                                ALIAS_PATTERN, "Letters, digits, '.', '_', '-', '/' and one ':tag'."
                            )
                        ],
                    ),
                ),
                (
                    "ollama",
                    models.BooleanField(
                        default=False,
                        help_text="The name /api/tags and /api/ps show for this model (one per model).",
                        verbose_name="Ollama name",
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "model",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="aliases", to="models_app.llmmodel"
                    ),
                ),
            ],
            options={
                "verbose_name": "alias",
                "verbose_name_plural": "aliases",
                "ordering": ("-ollama", "name"),
                "constraints": [
                    models.UniqueConstraint(
                        django.db.models.functions.text.Lower("name"), name="alias_name_unique_ignoring_case"
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("ollama", True)), fields=("model",), name="one_ollama_name_per_model"
                    ),
                ],
            },
        ),
        migrations.RunPython(assign_ollama_names, migrations.RunPython.noop),
    ]
