"""Query-string filters (django-filter) for the management API's lists."""

import django_filters

from models_app.choices import Lane, ModelStatus, UsageStatus
from models_app.models import APIToken, LLMModel, UsageRecord


class LLMModelFilterSet(django_filters.FilterSet):
    """`?status=available&enabled=true&architecture=llama&quantization=Q4_1`."""

    status = django_filters.MultipleChoiceFilter(choices=ModelStatus.choices)
    architecture = django_filters.CharFilter(lookup_expr="iexact")
    quantization = django_filters.CharFilter(lookup_expr="iexact")

    class Meta:
        model = LLMModel
        fields = ("status", "enabled", "preload", "architecture", "quantization")


class APITokenFilterSet(django_filters.FilterSet):
    """`?revoked=false&owner=alice`."""

    owner = django_filters.CharFilter(field_name="owner__username")

    class Meta:
        model = APIToken
        fields = ("revoked", "owner")


class UsageFilterSet(django_filters.FilterSet):
    """`?token=3&model=smollm2&status=completed&endpoint=chat.completions&lane=batch&since=...&until=...`."""

    token = django_filters.NumberFilter(field_name="token_id")
    model = django_filters.CharFilter(field_name="model_id")
    status = django_filters.MultipleChoiceFilter(choices=UsageStatus.choices)
    endpoint = django_filters.CharFilter()
    lane = django_filters.ChoiceFilter(choices=Lane.choices)
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte", label="Created at or after")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt", label="Created before")

    class Meta:
        model = UsageRecord
        fields = ("token", "model", "status", "endpoint", "lane", "since", "until")
