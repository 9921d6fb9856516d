"""No escalation: what a caller holds bounds what it may hand out to, or change on, a token.

A caller (a bearer token, or a user in the admin or the browsable API) holds scopes,
models, an expiry, limits and a lane. A token it mints or changes may get no more than
that: a subset of its scopes and models, an expiry no later than its own, limits no
looser, and the batch lane if it is batch. Whatever a new token leaves unset (expiry,
limits, lane) it takes from the caller, so an expiring token mints expiring tokens.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from models_app.choices import Lane, Scope
from models_app.models import APIToken

LIMIT_FIELDS = ("rate_limit_rpm", "rate_limit_tpm", "max_concurrent")
INHERITED_FIELDS = ("expires_at", *LIMIT_FIELDS, "lane")


class GrantRefused(Exception):
    """A caller asked to grant or touch more than it holds (403); `param` names the field."""

    def __init__(self, message: str, *, param: str | None, code: str) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class Grant:
    """The most a caller may give a token: its own scopes, models, expiry, limits and lane."""

    scopes: frozenset[str]
    models: frozenset[str] = frozenset()  # empty: every model
    expires_at: datetime | None = None
    rate_limit_rpm: int | None = None  # None: unlimited
    rate_limit_tpm: int | None = None
    max_concurrent: int | None = None
    lane: str = Lane.INTERACTIVE

    @classmethod
    def of_token(cls, token: APIToken) -> "Grant":
        limits = {name: getattr(token, name) for name in ("rate_limit_rpm", "rate_limit_tpm", "max_concurrent", "lane")}
        return cls(
            scopes=frozenset(token.scopes), models=frozenset(m.pk for m in token.allowed_models.all()),
            expires_at=token.expires_at, **limits,
        )  # fmt: skip

    def limits(self) -> dict[str, int | str | None]:
        """The limits and lane, by the names APIToken and the inference Principal use."""
        return {"rate_limit_rpm": self.rate_limit_rpm, "rate_limit_tpm": self.rate_limit_tpm,
                "max_concurrent": self.max_concurrent, "lane": self.lane}  # fmt: skip

    @classmethod
    def of_staff(cls, user: AbstractBaseUser) -> "Grant":
        """A user in the Django admin: a superuser may grant anything, other staff every scope but `admin`."""
        if user.is_superuser:
            return cls(scopes=frozenset({Scope.ADMIN}))
        return cls(scopes=frozenset(Scope.values) - {Scope.ADMIN})

    def holds(self, scope: str) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def inherit(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`fields` with the expiry, limits and lane it leaves out taken from the caller."""
        return {**{name: getattr(self, name) for name in INHERITED_FIELDS}, **fields}

    def check(self, fields: Mapping[str, Any]) -> None:
        """GrantRefused unless every field given (create or change) is within what the caller holds."""
        if (scopes := fields.get("scopes")) is not None and (missing := sorted(s for s in scopes if not self.holds(s))):
            raise GrantRefused(
                f"A caller cannot grant scopes it does not hold: {', '.join(missing)} "
                f"(it has: {', '.join(sorted(self.scopes)) or 'none'}).",
                param="scopes",
                code="scope_escalation",
            )
        models = fields.get("models")
        if models is not None and self.models and (not models or not set(models) <= self.models):
            raise GrantRefused(
                f"This caller may only use {', '.join(sorted(self.models))}; list some of them in 'models'.",
                param="models",
                code="model_escalation",
            )
        if "expires_at" in fields and self.expires_at is not None:
            expires_at = fields["expires_at"]
            if expires_at is None or expires_at > self.expires_at:
                raise GrantRefused(
                    f"This caller expires at {self.expires_at:%Y-%m-%d %H:%M:%S} UTC, so the token must expire "
                    "no later (omit expires_at on create to get the caller's expiry).",
                    param="expires_at",
                    code="expiry_escalation",
                )
        for name in LIMIT_FIELDS:
            held = getattr(self, name)
            if name in fields and held is not None and (fields[name] is None or fields[name] > held):
                raise GrantRefused(
                    f"This caller is limited to {name}={held}, so the token's {name} must be at most {held} "
                    "(omit it on create to get the caller's).",
                    param=name,
                    code="limit_escalation",
                )
        if self.lane == Lane.BATCH and fields.get("lane", Lane.BATCH) != Lane.BATCH:
            raise GrantRefused(
                "A batch-lane caller can only grant the batch lane.", param="lane", code="lane_escalation"
            )

    def check_may_change(self, token: APIToken) -> None:
        """GrantRefused unless the caller holds every scope and model of `token` (to change or revoke it)."""
        if missing := sorted(s for s in token.scopes if not self.holds(s)):
            raise GrantRefused(
                f"This caller cannot change or revoke a token holding scopes it lacks: {', '.join(missing)}.",
                param=None,
                code="scope_escalation",
            )
        if self.models:  # a caller limited to some models reaches only tokens limited to some of them
            theirs = {m.pk for m in token.allowed_models.all()}
            if not theirs or not theirs <= self.models:
                raise GrantRefused(
                    "This caller cannot change or revoke a token that may use models it may not "
                    f"(it may use only {', '.join(sorted(self.models))}).",
                    param=None,
                    code="model_escalation",
                )
