"""Scopes for the management API: what a bearer token (or a logged-in staff user) may do."""

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from models_app.choices import Scope
from models_app.grants import Grant
from models_app.models import APIToken


def caller_scopes(request: Request) -> frozenset[str]:
    """The scopes of whoever is calling: the bearer token's, or a session user's admin rights.

    A browser session gets what the Django admin would let that user do: a superuser is
    `admin`; other staff read with the view permission and manage with the change
    permission on models; anyone else gets nothing.
    """
    if isinstance(request.auth, APIToken):
        return frozenset(request.auth.scopes)
    user = request.user
    if not (user and user.is_authenticated and user.is_active and user.is_staff):
        return frozenset()
    if user.is_superuser:
        return frozenset({Scope.ADMIN})
    scopes = set()
    if user.has_perm("models_app.view_llmmodel"):
        scopes.add(Scope.MODELS_READ)
    if user.has_perm("models_app.change_llmmodel"):
        scopes.add(Scope.MODELS_MANAGE)
    return frozenset(scopes)


def holds_scope(scopes: frozenset[str], scope: str) -> bool:
    """`admin` implies every other scope, as on the ninja surfaces."""
    return scope in scopes or Scope.ADMIN in scopes


def is_admin(request: Request) -> bool:
    return Scope.ADMIN in caller_scopes(request)


def caller_model_ids(request: Request) -> frozenset[str]:
    """The models a bearer token is limited to; empty means every model (and for sessions)."""
    if isinstance(request.auth, APIToken):
        return frozenset(m.pk for m in request.auth.allowed_models.all())
    return frozenset()


class ModelsScope(BasePermission):
    """Reads need `models:read`; anything that changes state needs `models:manage`."""

    read_scope = Scope.MODELS_READ
    write_scope = Scope.MODELS_MANAGE

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False  # DRF then answers 401, not 403
        needed = self.read_scope if request.method in SAFE_METHODS else self.write_scope
        scopes = caller_scopes(request)
        if holds_scope(scopes, needed):
            return True
        # DRF reads `message` and `code` off the instance for its PermissionDenied.
        self.message = f"This caller lacks the '{needed}' scope (it has: {', '.join(sorted(scopes)) or 'none'})."
        self.code = "insufficient_scope"
        return False


def caller_grant(request: Request) -> Grant:
    """What the caller may hand out (models_app.grants): a bearer token's own bounds, or a session's scopes."""
    if isinstance(request.auth, APIToken):
        return Grant.of_token(request.auth)
    return Grant(scopes=caller_scopes(request))
