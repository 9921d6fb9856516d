"""System checks on the inference settings (`manage.py check --deploy`)."""

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def trusted_local_addresses(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """Warn when header-less requests are trusted from beyond this machine."""
    if not settings.TRUSTED_LOCAL_TOKEN:
        return []
    remote = [str(n) for n in settings.TRUSTED_LOCAL_ADDRESSES if not n.is_loopback]
    if not remote:
        return []
    return [
        Warning(
            f"TRUSTED_LOCAL_TOKEN is set and TRUSTED_LOCAL_ADDRESSES includes {', '.join(remote)}: any machine "
            "there may use the server without a token, with that token's scopes and limits.",
            hint="Keep TRUSTED_LOCAL_ADDRESSES to loopback (127.0.0.0/8, ::1/128), or give each client its own token.",
            id="karen_host.W001",
        )
    ]
