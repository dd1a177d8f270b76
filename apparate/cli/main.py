"""The ``apparate`` command: thin wrappers that call the Python API."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from apparate.catalog import list_images
from apparate.cli.text import LineObserver, human_size, summary_line
from apparate.errors import ApparateError, UsageError
from apparate.platform import Platform
from apparate.progress import PullObserver
from apparate.pull import PullOptions, pull
from apparate.reference import Reference
from apparate.registry.credentials import Credentials

app = typer.Typer(
    help="Pull container images fetching only what this machine lacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
state = {"debug": False}

StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Local store directory (default: APPARATE_STORE "
        "or the user data directory).",
    ),
]


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option(help="Log each request and show tracebacks.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log each layer.")
    ] = False,
) -> None:
    state["debug"] = debug
    level = logging.WARNING
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowercaseLevelFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO if debug else logging.WARNING)
    logging.getLogger("hpack").setLevel(logging.WARNING)


class _LowercaseLevelFormatter(logging.Formatter):
    """Format records as ``warning: ...``, in the style of the error line."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


@app.command("pull")
def pull_command(
    reference: Annotated[
        str, typer.Argument(help="Image reference, e.g. debian:bookworm.")
    ],
    platform: Annotated[
        str | None,
        typer.Option(
            help="OS/ARCH[/VARIANT] to pull from a multi-platform image "
            "(default: this machine)."
        ),
    ] = None,
    store: StoreOption = None,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only the digest.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary.")
    ] = False,
    username: Annotated[
        str | None,
        typer.Option("-u", "--username", help="User name for the image's registry."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from standard input."),
    ] = False,
    insecure: Annotated[
        list[str],
        typer.Option(
            "--insecure-registry",
            help="Registry host allowed over plain HTTP "
            "(repeatable; loopback hosts always are).",
        ),
    ] = [],  # noqa: B006
) -> None:
    """Pull an image into the local store."""
    with _errors_reported():
        ref = Reference.parse(reference)
        options = PullOptions(
            store=store,
            platform=_parse_platform(platform),
            insecure_registries=insecure,
            credentials=_explicit_credentials(ref, username, password_stdin),
        )
        quiet_output = quiet or as_json
        with _observer(quiet_output) as observer:
            options.observer = observer
            result = pull(ref, options)
        if as_json:
            print(json.dumps(result.to_dict(), indent=2))
        elif quiet:
            print(result.digest)
        else:
            print(summary_line(result))


@app.command("images")
def images_command(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the images in the local store."""
    with _errors_reported():
        images = list_images(store)
        if as_json:
            rows = [
                {"reference": i.reference, "digest": str(i.digest), "size": i.size}
                for i in images
            ]
            print(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("REFERENCE", "DIGEST", "SIZE", box=None, pad_edge=False)
        for image in images:
            table.add_row(
                image.reference, str(image.digest)[:19], human_size(image.size)
            )
        # Wide enough that references are never cut when stdout is a pipe.
        Console(width=None if sys.stdout.isatty() else 250).print(table)


def _parse_platform(text: str | None) -> Platform | None:
    if text is None:
        return None
    try:
        return Platform.parse(text)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _explicit_credentials(
    ref: Reference, username: str | None, password_stdin: bool
) -> dict[str, Credentials]:
    if password_stdin and not username:
        raise UsageError("--password-stdin needs --username")
    if not username:
        return {}
    if not password_stdin:
        raise UsageError(
            "--username needs --password-stdin (passwords are not "
            "taken on the command line)"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin read an empty password")
    return {ref.api_host: Credentials(username, password, None)}


@contextlib.contextmanager
def _observer(quiet: bool):  # type: ignore[no-untyped-def]
    if quiet:
        yield PullObserver()
    elif sys.stdout.isatty():
        from apparate.cli.bars import BarObserver  # rich costs start-up time

        with BarObserver() as bars:
            yield bars
    else:
        yield LineObserver()


@contextlib.contextmanager
def _errors_reported():  # type: ignore[no-untyped-def]
    """Print an apparate error as one ``error:`` line and exit with its code."""
    try:
        yield
    except ApparateError as error:
        if state["debug"]:
            logging.getLogger("apparate").exception("failed")
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted; nothing partial was stored", file=sys.stderr)
        raise typer.Exit(130) from None


def run() -> None:
    app()


if __name__ == "__main__":
    run()
