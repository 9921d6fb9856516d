"""The admin of who may call the server and what it cost: API tokens and usage records.

Tokens are minted through `issue_token`, within the staff user's own grant (models_app.grants).
"""

import csv
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from models_app.api.renderers import csv_cell
from models_app.choices import Lane, Scope
from models_app.grants import LIMIT_FIELDS, Grant, GrantRefused
from models_app.models import APIToken, UsageRecord
from models_app.selectors import token_usage_now, trusted_local_state
from models_app.services import issue_token, revoke_token
from models_app.usage_rollup import decode_rate


class APITokenForm(forms.ModelForm):
    """A token as staff edit it; `grant` (set by the admin per request) bounds what they may give it."""

    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)
    lane = forms.ChoiceField(choices=Lane.choices, initial=Lane.INTERACTIVE, required=False)
    grant: Grant | None = None

    class Meta:
        model = APIToken
        fields = ("name", "owner", "scopes", "allowed_models", "expires_at", "rate_limit_rpm", "rate_limit_tpm",
                  "max_concurrent", "lane")  # fmt: skip

    def clean_lane(self) -> str:
        return self.cleaned_data["lane"] or Lane.INTERACTIVE

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.grant is None:
            return cleaned
        try:
            if self.instance.pk:
                self.grant.check_may_change(self.instance)
            asked = {name: cleaned[name] for name in ("scopes", *LIMIT_FIELDS, "expires_at", "lane") if name in cleaned}
            if "allowed_models" in cleaned:
                asked["models"] = [m.pk for m in cleaned["allowed_models"]]
            self.grant.check(asked)
        except GrantRefused as exc:
            field = {"models": "allowed_models"}.get(exc.param, exc.param)
            self.add_error(field if field in self.fields else None, str(exc))
        expires_at = cleaned.get("expires_at")
        if not self.instance.pk and expires_at is not None and expires_at <= timezone.now():
            self.add_error("expires_at", "Must be in the future.")
        return cleaned


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    """Staff other than superusers mint tokens only for themselves and never grant `admin` (models_app.grants)."""

    form = APITokenForm
    list_display = ("name", "prefix", "owner", "scope_list", "lane", "trusted_local", "revoked", "expires_at",
                    "last_used_at", "created_at")  # fmt: skip
    list_filter = ("revoked", "lane", "owner")
    search_fields = ("name", "prefix", "owner__username")
    readonly_fields = ("prefix", "last_used_at", "revoked", "revoked_at", "created_at", "requests_last_minute",
                       "tokens_last_minute", "in_flight", "usage")  # fmt: skip
    fieldsets = (
        (None, {"fields": ("name", "owner", "prefix", "scopes", "allowed_models", "expires_at")}),
        ("Limits and lane", {"fields": (("rate_limit_rpm", "rate_limit_tpm", "max_concurrent"), "lane")}),
        ("Usage against the limits", {"fields": ("requests_last_minute", "tokens_last_minute", "in_flight", "usage")}),
        ("State", {"fields": ("revoked", "revoked_at", "last_used_at", "created_at")}),
    )
    filter_horizontal = ("allowed_models",)
    list_select_related = ("owner",)
    actions = ("revoke",)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        state = trusted_local_state()
        level = messages.WARNING if "refused" in state else messages.INFO
        messages.add_message(request, level, state)
        return super().changelist_view(request, extra_context)

    @admin.display(description="trusted local", boolean=True)
    def trusted_local(self, obj: APIToken) -> bool:
        """Whether TRUSTED_LOCAL_TOKEN names this token (header-less local requests act as it)."""
        setting = settings.TRUSTED_LOCAL_TOKEN
        return bool(setting) and (obj.prefix == setting or (len(setting) > len(obj.prefix) and obj.matches(setting)))

    def get_form(self, request: HttpRequest, obj: APIToken | None = None, **kwargs: Any) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        form.grant = Grant.of_staff(request.user)  # the class is made per request, so this is this user's
        return form

    def get_fieldsets(self, request: HttpRequest, obj: APIToken | None = None) -> tuple:
        return self.fieldsets if obj is not None else self.fieldsets[:2]  # nothing measured yet on add

    def get_readonly_fields(self, request: HttpRequest, obj: APIToken | None = None) -> tuple[str, ...]:
        # A token's owner is fixed at creation, as over REST.
        return (*self.readonly_fields, "owner") if obj is not None else tuple(self.readonly_fields)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "owner" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="scopes")
    def scope_list(self, obj: APIToken) -> str:
        return ", ".join(obj.scopes)

    def _usage(self, obj: APIToken) -> dict[str, int]:
        if not obj.pk:
            return {"requests": 0, "tokens": 0, "in_flight": 0}
        if getattr(obj, "_usage_now", None) is None:  # three fields, one query
            obj._usage_now = token_usage_now(token_id=obj.pk)
        return obj._usage_now

    @admin.display(description="usage")
    def usage(self, obj: APIToken) -> str:
        if not obj.pk:
            return "-"
        return format_html('<a href="{}">usage rows</a> of this token', usage_link(token__id__exact=obj.pk))

    @admin.display(description="requests in the last minute")
    def requests_last_minute(self, obj: APIToken) -> str:
        return _against(self._usage(obj)["requests"], obj.rate_limit_rpm, "requests/min")

    @admin.display(description="tokens in the last minute")
    def tokens_last_minute(self, obj: APIToken) -> str:
        return _against(self._usage(obj)["tokens"], obj.rate_limit_tpm, "tokens/min")

    @admin.display(description="requests in flight")
    def in_flight(self, obj: APIToken) -> str:
        return _against(self._usage(obj)["in_flight"], obj.max_concurrent, "concurrent")

    def save_model(self, request, obj, form, change) -> None:  # noqa: ANN001 - Django's signature
        if change:
            super().save_model(request, obj, form, change)
            return
        data = form.cleaned_data
        token, secret = issue_token(
            name=data["name"], owner=data["owner"], scopes=data["scopes"],
            models=[m.pk for m in data["allowed_models"]], expires_at=data["expires_at"],
            rate_limit_rpm=data["rate_limit_rpm"], rate_limit_tpm=data["rate_limit_tpm"],
            max_concurrent=data["max_concurrent"], lane=data["lane"],
        )  # fmt: skip
        # The admin goes on with the form's instance (its m2m save, the log, the redirect): make it the new row.
        for name in ("pk", "prefix", "secret_hash", "created_at"):
            setattr(obj, name, getattr(token, name))
        obj._state.adding, obj._state.db = False, token._state.db
        # The only time the secret exists in clear: on this page, never in the DB or logs.
        self.message_user(request, f"Token created. Copy it now, it is not shown again: {secret}", messages.WARNING)

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        grant = Grant.of_staff(request.user)
        active = list(queryset.filter(revoked=False))
        tokens = [t for t in active if all(grant.holds(s) for s in t.scopes)]
        for token in tokens:
            revoke_token(token=token)
        skipped = len(active) - len(tokens)
        note = f"; {skipped} left alone: they hold scopes you cannot grant" if skipped else ""
        self.message_user(request, f"Revoked {len(tokens)} token(s){note}.")


def _against(used: int, limit: int | None, unit: str) -> str:
    return f"{used} of {limit} {unit}" if limit is not None else f"{used} (no {unit} limit)"


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """The columns an operator reads, filters on the side, and the filtered list as CSV (`export.csv`)."""

    list_display = ("time", "token_name", "model", "endpoint", "status", "tokens_in", "tokens_out", "ttft",
                    "tokens_per_s")  # fmt: skip
    list_filter = ("status", "lane", "endpoint", "model", "token", "created_at")
    search_fields = ("request_id", "token__name", "token__prefix", "model__id")
    date_hierarchy = "created_at"
    list_select_related = ("model", "token")
    list_per_page = 50
    readonly_fields = [f.name for f in UsageRecord._meta.fields]
    change_list_template = "admin/console/usage_change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # usage is measured, never typed in

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> Any:
        # Nine columns and the filters fit a 1400 px screen only without the app list on the left.
        query = request.GET.copy()
        query.pop("p", None)  # every page goes into the file
        context = {"is_nav_sidebar_enabled": False, "export_query": query.urlencode()}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    @admin.display(description="time (UTC)", ordering="created_at")
    def time(self, obj: UsageRecord) -> str:
        return f"{obj.created_at:%Y-%m-%d %H:%M:%S}"

    @admin.display(description="token", ordering="token__name")
    def token_name(self, obj: UsageRecord) -> str:
        return obj.token.name if obj.token else "-"

    @admin.display(description="in", ordering="prompt_tokens")
    def tokens_in(self, obj: UsageRecord) -> int:
        return obj.prompt_tokens

    @admin.display(description="out", ordering="completion_tokens")
    def tokens_out(self, obj: UsageRecord) -> int:
        return obj.completion_tokens

    @admin.display(description="TTFT ms", ordering="time_to_first_token_ms")
    def ttft(self, obj: UsageRecord) -> str:
        return "-" if obj.time_to_first_token_ms is None else f"{obj.time_to_first_token_ms:.0f}"

    @admin.display(description="tokens/s")
    def tokens_per_s(self, obj: UsageRecord) -> str:
        rate = decode_rate(obj.completion_tokens, obj.duration_ms, obj.time_to_first_token_ms)
        return "-" if rate is None else f"{rate[0] * 1000 / rate[1]:.1f}"

    def get_urls(self) -> list:
        export = path("export.csv", self.admin_site.admin_view(self.export_csv), name="models_app_usagerecord_export")
        return [export, *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> HttpResponse:
        """The rows the list shows with the same filters, search and order, every page of them, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rows = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:  # as the list itself answers a bad filter
            return HttpResponseRedirect(reverse("admin:models_app_usagerecord_changelist") + "?e=1")
        derived = {"token": lambda r: r.token.name if r.token else "", "model": lambda r: r.model_id or "",
                   "tokens_per_s": self.tokens_per_s}  # fmt: skip
        columns = ("request_id", "created_at", "finished_at", "token", "model", "endpoint", "lane", "status",
                   "prompt_tokens", "completion_tokens", "time_to_first_token_ms", "duration_ms", "tokens_per_s",
                   "client_address", "error_message")  # fmt: skip

        def lines() -> Iterator[str]:
            writer = csv.writer(_Line())
            yield writer.writerow(columns)
            for row in rows.iterator(chunk_size=2000):
                yield writer.writerow([csv_cell(derived[c](row) if c in derived else getattr(row, c)) for c in columns])

        response = StreamingHttpResponse(_in_chunks(lines()), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        return response


class _Line:
    """A file for csv.writer whose write returns the line, so that rows stream one by one."""

    def write(self, value: str) -> str:
        return value


async def _in_chunks(lines: Iterator[str], size: int = 500) -> AsyncIterator[str]:
    """Serve a sync line iterator (a database cursor) to ASGI without reading it all first.

    One thread pulls every chunk (thread_sensitive), as the cursor belongs to its connection.
    """
    while chunk := await sync_to_async(lambda: list(islice(lines, size)), thread_sensitive=True)():
        yield "".join(chunk)


def usage_link(**filters: Any) -> str:
    """The usage list filtered as given (`token__id__exact=3`), for links from the token and model pages."""
    return reverse("admin:models_app_usagerecord_changelist") + "?" + urlencode(filters)
