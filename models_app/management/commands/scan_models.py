from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from models_app.scanning import scan_models


class Command(BaseCommand):
    help = "Register the GGUF files under MODELS_DIR (or DIR): add new, refresh changed, mark missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", nargs="?", help="Directory to scan (default: MODELS_DIR)")

    def handle(self, *args: Any, directory: str | None = None, **options: Any) -> None:
        progress = None
        if self.stdout.isatty():
            from tqdm import tqdm

            def progress(name: str, total: int):  # noqa: ANN202 - tqdm's update is the callback
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"sha256 {name}", leave=False)
                return bar.update

        report = scan_models(Path(directory) if directory else None, progress=progress)
        for line in report.messages:
            self.stdout.write(self.style.WARNING(line))
        self.stdout.write(self.style.SUCCESS(report.summary()))
