"""`python -m karen_extension install --karen-root PATH` and `python -m karen_extension check`."""

import argparse
import asyncio
import sys
from pathlib import Path

from karen_extension.client import KarenHostClient
from karen_extension.config import load_config
from karen_extension.errors import KarenHostError
from karen_extension.install import InstallError, install_plugin


def main(argv: list[str] | None = None) -> int:
    """Run one command; print a one-line summary; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m karen_extension", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="copy the karen-host plugin into a KAREN checkout")
    install.add_argument("--karen-root", type=Path, required=True, help="KAREN checkout (has src/ai_karen_engine)")
    install.add_argument("--force", action="store_true", help="replace an installed copy")
    commands.add_parser("check", help="check the server and the token named by KAREN_HOST_API_KEY")
    args = parser.parse_args(argv)
    if args.command == "install":
        return _install(args.karen_root, args.force)
    return asyncio.run(_check())


def _install(karen_root: Path, force: bool) -> int:
    try:
        target = install_plugin(karen_root, force=force)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Installed the karen-host plugin in {target}; set KAREN_HOST_API_KEY (and KAREN_HOST_URL) for KAREN.")
    return 0


async def _check() -> int:
    config = load_config()
    client = KarenHostClient(config)
    try:
        health = await client.health()
        models = [m["id"] for m in await client.list_models()]
    except KarenHostError as exc:
        print(f"error ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    usable = ", ".join(models) or "none"
    print(f"karen-host at {config.base_url} is {health.get('status')}; this token may use: {usable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
