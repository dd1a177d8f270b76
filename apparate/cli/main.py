"""The ``apparate`` command: thin wrappers that call the Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from apparate import __version__
from apparate.catalog import list_images, pull_statistics
from apparate.chunked.writer import DEFAULT_LEVEL
from apparate.cli.text import (
    LineObserver,
    dry_run_report,
    format_table,
    human_size,
    short,
    stats_report,
    summary_line,
)
from apparate.convert import ConvertOptions, LayerConversion, convert
from apparate.errors import ApparateError, UsageError
from apparate.platform import Platform
from apparate.progress import PullObserver
from apparate.pull import PullOptions, pull
from apparate.reference import Reference
from apparate.registry.credentials import Credentials

app = typer.Typer(
    help="Pull container images, fetching only what this machine lacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state = {"debug": False, "verbose": False}


StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Local store directory (default: APPARATE_STORE, "
        "else the user data directory).",
    ),
]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Log each request and show tracebacks.")
]
VerboseOption = Annotated[bool, typer.Option("-v", "--verbose", help="Log each layer.")]
UsernameOption = Annotated[
    str | None,
    typer.Option("-u", "--username", help="User name for the registries involved."),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from standard input."),
]
InsecureOption = Annotated[
    list[str],
    typer.Option(
        "--insecure-registry",
        help="Registry host allowed over plain HTTP "
        "(repeatable; loopback hosts always are).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _print_version(value: bool) -> None:
    if value:
        print(f"apparate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: DebugOption = False,
    verbose: VerboseOption = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version.",
        ),
    ] = False,
) -> None:
    _configure_logging(debug, verbose)


@app.command("pull")
def pull_command(
    reference: Annotated[
        str, typer.Argument(help="Image reference, e.g. debian:bookworm.")
    ],
    platform: Annotated[
        str | None,
        typer.Option(
            help="Platform OS/ARCH or OS/ARCH/VARIANT to pull, e.g. linux/arm64 "
            "(default: this machine)."
        ),
    ] = None,
    store: StoreOption = None,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only the digest.")
    ] = False,
    as_json: JsonOption = False,
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    insecure: InsecureOption = [],  # noqa: B006 - typer reads it, never mutates it
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print per layer the bytes a pull would fetch and reuse; fetch "
            "only chunk tables.",
        ),
    ] = False,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Pull an image into the local store."""
    _configure_logging(debug, verbose)
    with _errors_reported():
        ref = Reference.parse(reference)
        options = PullOptions(
            store=store,
            platform=_parse_platform(platform),
            insecure_registries=insecure,
            credentials=_explicit_credentials(ref, username, password_stdin),
            dry_run=dry_run,
        )
        with _observer(quiet or as_json or dry_run) as observer:
            options.observer = observer
            result = pull(ref, options)

    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif quiet:
        print(result.digest)
    elif dry_run:
        print(dry_run_report(result))
    else:
        print(summary_line(result))


@app.command("convert")
def convert_command(
    source: Annotated[str, typer.Argument(help="Image to convert.")],
    destination: Annotated[str, typer.Argument(help="Where to push the result.")],
    compress_level: Annotated[
        int, typer.Option("--compress-level", help="zstd level for new frames.")
    ] = DEFAULT_LEVEL,
    reuse_from: Annotated[
        list[str] | None,
        typer.Option(
            "--reuse-from",
            help="Converted image whose frames unchanged chunks reuse (repeatable; "
            "default: the image DESTINATION points to now).",
        ),
    ] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
    username: UsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    insecure: InsecureOption = [],  # noqa: B006 - typer reads it, never mutates it
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Convert an image to chunked layers and push it."""
    _configure_logging(debug, verbose)
    with _errors_reported():
        src, dst = Reference.parse(source), Reference.parse(destination)
        credentials = _explicit_credentials(src, username, password_stdin)
        if credentials:
            credentials[dst.api_host] = credentials[src.api_host]
        options = ConvertOptions(
            store=store,
            level=compress_level,
            reuse_from=reuse_from,
            insecure_registries=tuple(insecure),
            credentials=credentials,
            on_layer=None if as_json else _print_conversion,
        )
        result = convert(source, destination, options)

    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    reused = sum(layer.frames_reused for layer in result.layers)
    print(
        f"{result.destination}: {result.digest}, {len(result.layers)} layers, "
        f"{human_size(result.bytes_pushed)} pushed, {result.blobs_mounted} blobs "
        f"mounted, {reused} frames reused, {result.seconds:.1f} s"
    )


def _print_conversion(layer: LayerConversion) -> None:
    print(
        f"{short(layer.source)}: converted to {short(layer.converted)}, "
        f"{human_size(layer.source_size)} to {human_size(layer.converted_size)}, "
        f"{layer.frames_reused} of {layer.chunks} frames reused",
        flush=True,
    )


@app.command("images")
def images_command(
    store: StoreOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the images in the local store."""
    _configure_logging(debug, False)
    with _errors_reported():
        images = list_images(store)

    if as_json:
        rows = [
            {"reference": i.reference, "digest": str(i.digest), "size": i.size}
            for i in images
        ]
        print(json.dumps(rows, indent=2))
        return
    table = [
        [image.reference, str(image.digest)[:19], human_size(image.size)]
        for image in images
    ]
    print(format_table(["REFERENCE", "DIGEST", "SIZE"], table))


@app.command("stats")
def stats_command(
    store: StoreOption = None,
    as_json: JsonOption = False,
    limit: Annotated[
        int, typer.Option("--limit", help="Number of recent pulls to list.")
    ] = 20,
) -> None:
    """Show past pulls: bytes fetched and saved, and speed."""
    with _errors_reported():
        totals, records = pull_statistics(store, limit)

    if as_json:
        document = {
            "pulls": totals.pulls,
            "layer_bytes": totals.layer_bytes,
            "bytes_fetched": totals.bytes_fetched,
            "bytes_reused": totals.bytes_reused,
            "bytes_saved": totals.bytes_saved,
            "seconds": round(totals.seconds, 3),
            "recent": [dataclasses.asdict(record) for record in records],
        }
        print(json.dumps(document, indent=2))
        return
    print(stats_report(totals, records))


def _configure_logging(debug: bool, verbose: bool) -> None:
    """Send log records to stderr; options given before or after a command add up."""
    state["debug"] = state["debug"] or debug
    state["verbose"] = state["verbose"] or verbose
    level = logging.WARNING
    if state["verbose"]:
        level = logging.INFO
    if state["debug"]:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    httpx_level = logging.INFO if state["debug"] else logging.WARNING
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("hpack").setLevel(logging.WARNING)


class _LogFormatter(logging.Formatter):
    """Format records as ``warning: ...``, with URL queries hidden.

    Redirect targets of object stores carry signed credentials in their
    query string, so no query reaches the log.
    """

    _QUERY = re.compile(r"(https?://[^\s?\"']+)\?[^\s\"']*")

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return self._QUERY.sub(r"\1?…", super().format(record))


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
            "--username needs --password-stdin: passwords are not "
            "taken on the command line, where other users can see them"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin read an empty password")
    return {ref.api_host: Credentials(username, password, None)}


@contextlib.contextmanager
def _observer(quiet: bool) -> Iterator[PullObserver]:
    if quiet:
        yield PullObserver()
    elif sys.stdout.isatty():
        from apparate.cli.bars import BarObserver  # rich costs start-up time

        with BarObserver() as bars:
            yield bars
    else:
        yield LineObserver()


@contextlib.contextmanager
def _errors_reported() -> Iterator[None]:
    """Print an apparate error as one ``error:`` line and exit with its code."""
    try:
        yield
    except ApparateError as error:
        if state["debug"]:
            logging.getLogger("apparate").debug("traceback:", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted; nothing partial was stored", file=sys.stderr)
        raise typer.Exit(130) from None


def run() -> None:
    """Run the command line; usage errors become one ``error:`` line, exit 2."""
    # Die quietly when a reader such as `head` closes the pipe, as Unix tools do.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        code = app(standalone_mode=False)
    except TyperException as error:
        # typer's copy of click raises these for unknown options, missing
        # arguments and the like.
        context = getattr(error, "ctx", None)
        command = context.command_path if context else "apparate"
        message = getattr(error, "format_message", error.__str__)().rstrip(".")
        print(f"error: {message}: see '{command} --help'", file=sys.stderr)
        code = getattr(error, "exit_code", UsageError.exit_code)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        code = 130
    _exit_now(code if isinstance(code, int) else 0)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, which takes about 0.1 s.

    Every file of the store is closed by the time a command returns, so only
    the standard streams and log handlers need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()
