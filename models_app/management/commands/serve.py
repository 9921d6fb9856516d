import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from karen_host.web import TLSFileError, tls_files
from models_app.bundled import link_bundled_model
from models_app.scanning import scan_models
from models_app.schedules import ensure_default_schedules
from models_app.services import bootstrap_first_run, close_interrupted_usage, ensure_service_token
from models_app.tasks import BrokerUnavailable, enqueue
from models_app.tasks import preload_models as preload_models_task
from models_app.tasks import scan_models as scan_models_task


class Command(BaseCommand):
    help = (
        "Prepare everything (migrate, bundled model, scan, first admin + token, service token, schedules), "
        "then run the web server, a Celery worker and beat together; Ctrl-C stops all three."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--models-dir", default=str(settings.MODELS_DIR))
        parser.add_argument("--log-level", default=settings.LOG_LEVEL, help="DEBUG, INFO, WARNING, ERROR")
        parser.add_argument("--no-serve", action="store_true", help="Prepare only; do not start the server")
        parser.add_argument(
            "--web-only",
            action="store_true",
            help="Serve HTTP only, in this process; run `celery -A karen_host worker` and `... beat` elsewhere",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger().setLevel(options["log_level"].upper())
        # Given on to everything this starts (the scan, the web server, the worker), never written into settings.
        models_dir = Path(options["models_dir"]).resolve()
        call_command("migrate", interactive=False, verbosity=0)
        # Nothing is in flight before the server starts: rows still `started` were cut off.
        if closed := close_interrupted_usage():
            self.stdout.write(f"Closed {closed} usage row(s) left open by a previous run as interrupted.")
        link_bundled_model(models_dir)
        report = scan_models(models_dir)
        for line in report.messages:
            self.stdout.write(self.style.WARNING(line))
        self.stdout.write(f"Models in {models_dir}: {report.summary()}")
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
        if ensure_service_token():
            self.stdout.write(f"Issued the worker's service token; its secret is in {settings.SERVICE_TOKEN_FILE}.")
        if schedules := ensure_default_schedules():
            self.stdout.write(f"Created the default schedules: {', '.join(schedules)} (edit them in the admin).")
        if options["no_serve"]:
            return
        self._queue_startup_work()
        if not options["web_only"]:
            self._run_with_worker_and_beat(options, models_dir)
            return
        self.stdout.write(f"Serving on {_scheme()}://{options['host']}:{options['port']}/ (Ctrl-C stops)")
        self.stdout.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # The web server replaces this process (same pid, same signals), so it does not carry what
        # preparing took: migrations, the scan's GGUF reader, the first-run work (about 15 MB).
        os.environ.update(MODELS_DIR=str(models_dir), LOG_LEVEL=options["log_level"].upper())
        os.execv(sys.executable, [sys.executable, *_web_args(options["host"], options["port"], options["log_level"])])

    def _queue_startup_work(self) -> None:
        # The scan above ran before the worker existed; this one, in the worker (whose MODELS_DIR is
        # the directory given here), also catches files added while the server starts, and shows in
        # the log that the worker is consuming. An eager Celery would run it in this process, on
        # settings' MODELS_DIR instead of --models-dir: the scan above is enough then.
        try:
            scan_id = None if settings.CELERY_TASK_ALWAYS_EAGER else enqueue(scan_models_task)
            preload_id = enqueue(preload_models_task)
        except BrokerUnavailable as exc:
            self.stderr.write(self.style.WARNING(f"Background work not queued: {exc}"))
            return
        scan = f"a scan ({scan_id}) and " if scan_id else ""
        self.stdout.write(f"Queued {scan}the preload of `preload` models ({preload_id}).")

    def _run_with_worker_and_beat(self, options: dict[str, Any], models_dir: Path) -> None:
        """Run the web server, a Celery worker and beat as children with prefixed logs; stop all when one stops."""
        import honcho.manager
        from honcho.printer import Printer

        host, port, level = options["host"], options["port"], options["log_level"].upper()
        env = {**os.environ, "MODELS_DIR": str(models_dir), "LOG_LEVEL": level}
        default_url = f"http://127.0.0.1:{settings.PORT}"
        if default_url == settings.SERVER_URL:  # not set: follow --host and --port
            reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            address = f"[{reachable}]" if ":" in reachable else reachable
            env["SERVER_URL"] = f"{_scheme()}://{address}:{port}"
        python = sys.executable
        commands = {
            "web": [python, *_web_args(host, port, level)],
            "worker": [python, "-m", "celery", "-A", "karen_host", "worker", "--loglevel", level],
            "beat": [python, "-m", "celery", "-A", "karen_host", "beat", "--loglevel", level],
        }  # fmt: skip
        self.stdout.write(f"Serving on {_scheme()}://{host}:{port}/ with a worker and beat (Ctrl-C stops all three)")
        self.stdout.flush()
        # honcho kills what is still running 5 s after Ctrl-C; a warm worker shutdown lets the
        # running task finish, and a self-test of a large model takes longer than that. The web
        # server drains for up to DRAIN_TIMEOUT_S, and then waits for cancelled jobs to end.
        honcho.manager.KILL_WAIT = max(15, settings.DRAIN_TIMEOUT_S + 15)
        manager = honcho.manager.Manager(Printer(sys.stdout, colour=sys.stdout.isatty()))
        for name, argv in commands.items():
            # exec: the signal honcho sends on Ctrl-C reaches the program, not an idle shell.
            manager.add_process(name, "exec " + shlex.join(argv), env=env, cwd=str(settings.BASE_DIR))
        manager.loop()
        if manager.returncode:
            sys.exit(manager.returncode)


def _web_args(host: str, port: int, level: str) -> list[str]:
    """`python -m karen_host.web` and where to listen; an unreadable TLS file fails here, before anything starts."""
    try:
        tls_files()
    except TLSFileError as exc:
        raise CommandError(str(exc)) from exc
    return ["-m", "karen_host.web", "--host", host, "--port", str(port), "--log-level", level.upper()]


def _scheme() -> str:
    return "https" if settings.TLS_CERT_FILE else "http"
