import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from models_app.bundled import link_bundled_model
from models_app.scanning import scan_models
from models_app.services import bootstrap_first_run, close_interrupted_usage


class Command(BaseCommand):
    help = "Prepare everything (migrate, bundled model, scan, first admin + token) and serve with daphne."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--models-dir", default=str(settings.MODELS_DIR))
        parser.add_argument("--log-level", default=settings.LOG_LEVEL, help="DEBUG, INFO, WARNING, ERROR")
        parser.add_argument("--no-serve", action="store_true", help="Prepare only; do not start the server")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger().setLevel(options["log_level"].upper())
        settings.MODELS_DIR = Path(options["models_dir"]).resolve()
        call_command("migrate", interactive=False, verbosity=0)
        # Nothing is in flight before the server starts: rows still `started` were cut off.
        if closed := close_interrupted_usage():
            self.stdout.write(f"Closed {closed} usage row(s) left open by a previous run as interrupted.")
        link_bundled_model(settings.MODELS_DIR)
        report = scan_models(settings.MODELS_DIR)
        for line in report.messages:
            self.stdout.write(self.style.WARNING(line))
        self.stdout.write(f"Models in {settings.MODELS_DIR}: {report.summary()}")
        if created := bootstrap_first_run():
            username, password, secret = created
            self.stdout.write(
                self.style.SUCCESS(
                    "\nFirst run: save these now, they are not shown again.\n"
                    f"  Admin:     http://{options['host']}:{options['port']}/admin/\n"
                    f"  Username:  {username}\n"
                    f"  Password:  {password}\n"
                    f"  API token: {secret}\n"
                    "  (lost them? `manage.py changepassword admin`, `manage.py create_token NAME`)\n"
                )
            )
        if options["no_serve"]:
            return
        from daphne.cli import CommandLineInterface

        self.stdout.write(f"Serving on http://{options['host']}:{options['port']}/ (Ctrl-C stops)")
        CommandLineInterface().run(
            [
                "--bind", options["host"],
                "--port", str(options["port"]),
                "--verbosity", "1" if options["log_level"].upper() in ("DEBUG", "INFO") else "0",
                "karen_host.asgi:application",
            ]
        )  # fmt: skip
