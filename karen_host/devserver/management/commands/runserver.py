"""`manage.py runserver`: daphne's development server (ASGI: HTTP and websockets, static files)."""

from daphne.management.commands.runserver import Command

__all__ = ["Command"]
