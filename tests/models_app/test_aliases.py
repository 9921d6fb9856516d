"""Model aliases: default Ollama names from metadata, uniqueness across the registry, the admin inline."""

import shutil

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from models_app.models import ModelAlias
from models_app.models.aliases import derive_ollama_name
from models_app.scanning import scan_models
from models_app.selectors import UnknownModel, ollama_name, resolve_model
from models_app.services import assign_ollama_name


def test_the_bundled_model_is_named_as_ollamas_library_would(bundled_metadata, bundled_gguf):
    name = derive_ollama_name(model_id="x", metadata=bundled_metadata["extra"], file_name=bundled_gguf.name,
                              quantization=bundled_metadata["quantization"],
                              parameter_count=bundled_metadata["parameter_count"])  # fmt: skip
    assert name == "smollm2:135m-instruct-q4_1"


def test_a_name_without_metadata_comes_from_the_id_and_keeps_dots():
    name = derive_ollama_name(
        model_id="Llama-3.2-3B", metadata={}, quantization="Q4_K_M", parameter_count=3_210_000_000
    )
    assert name == "llama-3.2-3b:3.2b-q4_k_m"
    assert derive_ollama_name(model_id="x", metadata={}, quantization="", parameter_count=None) == "x:latest"


def test_a_scan_gives_each_new_model_its_ollama_name_and_a_second_copy_a_suffix(models_dir, bundled_gguf, db):
    shutil.copyfile(bundled_gguf, models_dir / "a.gguf")
    shutil.copyfile(bundled_gguf, models_dir / "b.gguf")
    report = scan_models(models_dir)
    assert sorted(report.added) == ["a", "b"]
    names = dict(ModelAlias.objects.filter(ollama=True).values_list("model_id", "name"))
    assert names == {"a": "smollm2:135m-q4_1", "b": "smollm2:135m-q4_1-2"}
    assert resolve_model("smollm2:135m-q4_1-2").id == "b"


def test_assigning_is_idempotent(small_model):
    assert assign_ollama_name(model=small_model) is None
    assert ollama_name(small_model) == "smollm2:135m-instruct-q4_1"


def test_an_alias_may_not_be_a_model_id_or_another_alias_in_any_case(small_model):
    ModelAlias.objects.create(name="gpt-4o-mini", model=small_model)
    for name, why in (("smollm2", "is a model's id"), ("GPT-4o-Mini", "already names the model 'smollm2'")):
        with pytest.raises(ValidationError, match=why):
            ModelAlias(name=name, model=small_model).full_clean()
    with pytest.raises(ValidationError, match="Letters, digits"):
        ModelAlias(name="bad name", model=small_model).full_clean()


def test_the_database_keeps_one_ollama_name_per_model_and_names_unique_ignoring_case(small_model):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelAlias.objects.create(name="another:tag", model=small_model, ollama=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelAlias.objects.create(name="SMOLLM2:135M-INSTRUCT-Q4_1", model=small_model)


def test_an_unknown_name_is_its_own_error(small_model):
    with pytest.raises(UnknownModel):
        resolve_model("gpt-5")


def test_ids_match_ignoring_case_like_aliases(small_model):
    assert resolve_model("SmolLM2").id == "smollm2"
    assert resolve_model("SMOLLM2:latest").id == "smollm2"


def test_the_admin_edits_aliases_inline(admin_client, small_model):
    url = f"/admin/models_app/llmmodel/{small_model.pk}/change/"
    page = admin_client.get(url)
    assert "smollm2:135m-instruct-q4_1" in page.content.decode()
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list | dict)}
    data.update(_inline_management(page))
    data.update({"aliases-1-name": "gpt-4o-mini", "aliases-1-model": small_model.pk})
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    assert resolve_model("gpt-4o-mini").id == "smollm2"
    data["aliases-1-name"] = "smollm2"  # a model's id: refused on the page, nothing saved
    data["aliases-2-name"], data["aliases-TOTAL_FORMS"] = "", "3"
    refused = admin_client.post(url, data)
    assert refused.status_code == 200 and "is a model&#x27;s id" in refused.content.decode()


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ({"aliases-1-name": "Karen", "aliases-2-name": "karen"}, "differ only in case"),
        ({"aliases-1-name": "karen", "aliases-1-ollama": "on", "aliases-2-name": "k2"}, "on one alias only"),
    ],
)
def test_the_admin_refuses_rows_that_clash_with_each_other(admin_client, small_model, rows, why):
    url = f"/admin/models_app/llmmodel/{small_model.pk}/change/"
    page = admin_client.get(url)
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list | dict)}
    data.update(_inline_management(page))
    data.update({"aliases-TOTAL_FORMS": "3", **rows})
    data.update({"aliases-0-ollama": "on"})  # the existing Ollama name stays ticked
    data = {k: v for k, v in data.items() if v is not False}  # an unticked box is not sent
    response = admin_client.post(url, data)
    assert response.status_code == 200 and why in response.content.decode()
    assert ModelAlias.objects.count() == 1


def _inline_management(page) -> dict:
    """The inline formsets' management and existing-row fields, as the change page rendered them."""
    data = {}
    for formset in page.context["inline_admin_formsets"]:
        fs = formset.formset
        for key, value in fs.management_form.initial.items():
            data[f"{fs.prefix}-{key}"] = value
        for i, form in enumerate(fs.forms):
            for name, field in form.fields.items():
                value = form.initial.get(name, field.initial)
                if value is None:
                    continue
                data[f"{fs.prefix}-{i}-{name}"] = value.pk if hasattr(value, "pk") else value
    data["aliases-TOTAL_FORMS"] = "2"
    return data


def test_the_migration_names_models_registered_before_aliases(transactional_db, bundled_metadata, bundled_gguf):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("models_app", "0006_token_budget_of")], [("models_app", "0007_model_aliases")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps.get_model("models_app", "LLMModel")
        for pk in ("smollm2", "copy"):
            old.objects.create(id=pk, name=pk, file_path=f"/m/{pk}/{bundled_gguf.name}", quantization="Q4_1",
                               parameter_count=bundled_metadata["parameter_count"],
                               gguf_metadata=bundled_metadata["extra"])  # fmt: skip
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps.get_model("models_app", "ModelAlias")
        names = dict(new.objects.filter(ollama=True).values_list("model_id", "name"))
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    assert names == {"copy": "smollm2:135m-instruct-q4_1", "smollm2": "smollm2:135m-instruct-q4_1-2"}
