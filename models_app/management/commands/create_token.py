from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from models_app.choices import Scope
from models_app.services import TokenError, issue_token


class Command(BaseCommand):
    help = "Create an API token and print its secret (shown this once only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--scopes", nargs="+", default=[Scope.INFERENCE], choices=Scope.values)
        parser.add_argument("--models", nargs="*", default=[], help="Allowed model ids (default: all)")
        parser.add_argument("--owner", help="Username of the owner (default: the first superuser)")
        parser.add_argument("--expires-in-days", type=int, help="Expire after this many days")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        if options["owner"]:
            owner = User.objects.filter(username=options["owner"]).first()
        else:
            owner = User.objects.filter(is_superuser=True).order_by("pk").first()
        if owner is None:
            raise CommandError("no such owner; pass --owner USERNAME or create a superuser first")
        days = options["expires_in_days"]
        try:
            token, secret = issue_token(
                name=options["name"],
                owner=owner,
                scopes=options["scopes"],
                models=options["models"],
                expires_at=timezone.now() + timedelta(days=days) if days else None,
            )
        except TokenError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Token {token.name!r} ({', '.join(token.scopes)}); keep it, it is not shown again:")
        self.stdout.write(secret)
