"""The ``apparate`` command: thin wrappers that call the Python API.

Each command loads the modules it runs only when it runs: httpx alone takes
about 0.07 s to load (``scripts/bench import`` prints it), and an import into
containerd or a file does not use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from typer.exceptions import TyperException

from apparate import __version__
from apparate.chunked.writer import DEFAULT_LEVEL, MAX_LEVEL, MIN_LEVEL
from apparate.cli.launch import exit_code_of
from apparate.cli.output import CheckedOutput, OutputUnwritable
from apparate.cli.text import (
    LineObserver,
    conversion_line,
    convert_line,
    dry_run_report,
    gc_report,
    images_report,
    import_line,
    resolver_line,
    sources_line,
    sources_report,
    stats_report,
    summary_line,
)
from apparate.config import Mirror, load_config, parse_size
from apparate.errors import (
    ApparateError,
    ImageImportError,
    NotFound,
    RegistryUnreachable,
    UsageError,
)
from apparate.importers import Daemons, ImportOptions, import_image
from apparate.importers.files import writes_to_stdout, written_in_place
from apparate.importers.run import check_target, interrupted_target
from apparate.importers.target import AUTO, OCI, TARGET_HELP, ImportTarget
from apparate.platform import Platform
from apparate.progress import PullObserver
from apparate.reference import Reference
from apparate.store.layout import default_store_path
from apparate.store.selection import is_digest_prefix

if TYPE_CHECKING:
    from apparate.convert import LayerConversion
    from apparate.registry.credentials import Credentials
    from apparate.result import PullResult

app = typer.Typer(
    help="Pull container images, fetching only what this machine lacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
state = {"debug": False, "verbose": False, "interrupt_reported": False}


def _store_path(text: str) -> Path:
    """Parse --store, rejecting an empty value, which Path reads as the current folder."""
    if not text:
        raise typer.BadParameter("it is empty: give a folder or leave it out")
    return Path(text)


StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        parser=_store_path,
        metavar="<path>",
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
    typer.Option(
        "-u",
        "--username",
        help="User name for the image's registry, never sent to its mirrors.",
    ),
]
ConvertUsernameOption = Annotated[
    str | None,
    typer.Option(
        "-u",
        "--username",
        help="User name for the registries of SOURCE and DESTINATION.",
    ),
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
IntoOption = Annotated[
    str | None,
    typer.Option(
        "--into",
        help=f"Where the image goes once stored: {TARGET_HELP} (default: "
        "APPARATE_INTO, else into in config.toml, else auto: docker if its socket "
        "accepts connections, else containerd, else the local store only).",
    ),
]
ContainerdAddressOption = Annotated[
    str | None,
    typer.Option(
        "--containerd-address",
        help="containerd's socket (default: CONTAINERD_ADDRESS, else "
        "/run/containerd/containerd.sock).",
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        help="containerd namespace to import into (default: CONTAINERD_NAMESPACE, "
        "else default; kubelet uses k8s.io).",
    ),
]
MirrorOption = Annotated[
    list[str],
    typer.Option(
        "--mirror",
        help="Mirror URL of the image's registry, serving content by digest "
        "(repeatable; tried with those of config.toml and hosts.toml).",
    ),
]
ResolvingMirrorOption = Annotated[
    list[str],
    typer.Option(
        "--resolving-mirror",
        help="Mirror URL also trusted to resolve tags, before the registry "
        "itself (repeatable; as hosts.toml's resolve capability).",
    ),
]


def _flag_mirrors(digest_only: list[str], resolving: list[str]) -> list[Mirror]:
    return [
        *(Mirror(url) for url in digest_only),
        *(Mirror(url, resolve=True) for url in resolving),
    ]


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
    mirror: MirrorOption = [],  # noqa: B006 - typer reads it, never mutates it
    resolving_mirror: ResolvingMirrorOption = [],  # noqa: B006 - as above
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print per layer the bytes a pull would fetch and reuse; fetch "
            "only chunk tables.",
        ),
    ] = False,
    into: IntoOption = None,
    containerd_address: ContainerdAddressOption = None,
    namespace: NamespaceOption = None,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Pull an image into the local store, then import it (see --into)."""
    _configure_logging(debug, verbose)
    with _errors_reported(reference, FETCH_INTERRUPTED):
        # Loaded inside, so Ctrl-C while loading gets this command's message.
        from apparate.pulling import PullOptions, pull

        _check_one_output(quiet, as_json)
        ref = Reference.parse(reference)
        daemons = _daemons(containerd_address, namespace)
        options = PullOptions(
            store=store,
            platform=_parse_platform(platform),
            insecure_registries=insecure,
            credentials=_explicit_credentials(ref, username, password_stdin),
            dry_run=dry_run,
            mirrors=_flag_mirrors(mirror, resolving_mirror),
            into=into,
            daemons=daemons,
        )
        _checked_target(into, daemons, dry_run)
        with _observer(quiet or as_json or dry_run) as observer:
            options.observer = observer
            try:
                result = pull(ref, options)
            except ImageImportError as error:
                # The image is stored, and a script may need its digest.
                if error.pulled is not None:
                    _print_pull(error.pulled, as_json, quiet, dry_run)
                raise
    _print_pull(result, as_json, quiet, dry_run)


def _print_pull(result: PullResult, as_json: bool, quiet: bool, dry_run: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    elif quiet:
        print(result.digest)
    elif dry_run:
        print(dry_run_report(result))
    else:
        print(summary_line(result))
        if line := resolver_line(result):
            print(line)
        if line := sources_line(result):
            print(line)
        if result.imported:
            print(import_line(result.imported))


@app.command("import")
def import_command(
    reference: Annotated[
        str,
        typer.Argument(
            help="Image in the local store, as it was pulled, or its digest as "
            "'apparate images' lists it (a unique prefix of the digest is enough)."
        ),
    ],
    into: IntoOption = None,
    store: StoreOption = None,
    containerd_address: ContainerdAddressOption = None,
    namespace: NamespaceOption = None,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="Print only the image ID.")
    ] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import an image from the local store again, without fetching it."""
    _configure_logging(debug, verbose)
    with _errors_reported(reference):
        _check_one_output(quiet, as_json)
        # A digest prefix, as ``images`` prints it, is not an image name. Other
        # arguments are parsed here, so an invalid one exits with code 2.
        if not is_digest_prefix(reference):
            Reference.parse(reference)
        daemons = _daemons(containerd_address, namespace)
        target = _checked_target(into, daemons)
    with _errors_reported(reference, import_interrupted(target)):
        options = ImportOptions(store=store, into=into, daemons=daemons)
        imported = import_image(reference, options)

    if as_json:
        print(json.dumps(imported.to_dict(), indent=2))
    elif quiet:
        print(imported.image_id)
    else:
        print(f"{imported.reference}: {import_line(imported)}")


def _check_one_output(quiet: bool, as_json: bool) -> None:
    if quiet and as_json:
        raise UsageError(
            "--quiet and --json cannot be used together",
            hint="--json output contains the digest that --quiet prints",
        )


def _checked_target(
    into: str | None, daemons: Daemons, dry_run: bool = False
) -> ImportTarget:
    """Check --into, APPARATE_INTO, config.toml's into and the daemon settings up front.

    Return the target they request. An archive written to standard output
    takes all of it, so the command's own output then goes to standard
    error. A dry run writes no archive.
    """
    target = check_target(into, daemons)
    path = target.path
    if path is not None and writes_to_stdout(path) and not dry_run:
        # Its write errors are reported as standard output's were.
        stderr = sys.__stderr__
        sys.stdout = CheckedOutput(stderr, name="standard error") if stderr else stderr
    return target


def _daemons(containerd_address: str | None, namespace: str | None) -> Daemons:
    # An empty value is a mistake in a script, so it is an error, not the default.
    for option, value in (("--containerd-address", containerd_address),
                          ("--namespace", namespace)):  # fmt: skip
        if value is not None and not value.strip():
            raise UsageError(f"{option} is empty", hint="give a value or leave it out")
    return Daemons.from_environment().with_options(containerd_address, namespace)


@app.command("convert")
def convert_command(
    source: Annotated[str, typer.Argument(help="Image to convert.")],
    destination: Annotated[str, typer.Argument(help="Where to push the result.")],
    compress_level: Annotated[
        int,
        typer.Option(
            "--compress-level",
            help=f"zstd level for new frames, from {MIN_LEVEL} (fastest) "
            f"to {MAX_LEVEL} (smallest).",
        ),
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
    username: ConvertUsernameOption = None,
    password_stdin: PasswordStdinOption = False,
    insecure: InsecureOption = [],  # noqa: B006 - typer reads it, never mutates it
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Convert an image to chunked layers and push it."""
    _configure_logging(debug, verbose)
    with _errors_reported(interrupted=FETCH_INTERRUPTED):
        # Loaded inside, so Ctrl-C while loading gets this command's message.
        from apparate.convert import ConvertOptions, convert

        _check_compress_level(compress_level)
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
    print(convert_line(result))


def _check_compress_level(level: int) -> None:
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise UsageError(
            f"--compress-level {level} is out of range: zstd levels run from "
            f"{MIN_LEVEL} to {MAX_LEVEL}",
            hint=f"the default, {DEFAULT_LEVEL}, suits most images",
        )


def _print_conversion(layer: LayerConversion) -> None:
    print(conversion_line(layer), flush=True)


@app.command("images")
def images_command(
    store: StoreOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the images in the local store."""
    from apparate.catalog import list_images

    _configure_logging(debug, False)
    with _errors_reported():
        images = list_images(store)

    if as_json:
        rows = [
            {
                "reference": i.reference,
                "digest": str(i.digest),
                "index_digest": str(i.index_digest) if i.index_digest else None,
                "platform": i.platform,
                "size": i.size,
                "last_used": round(i.last_used, 3),
                "complete": i.complete,
            }
            for i in images
        ]
        print(json.dumps(rows, indent=2))
        return
    print(images_report(images))


DryRunGcOption = Annotated[
    bool,
    typer.Option("--dry-run", help="Print what would be removed; remove nothing."),
]


@app.command("rm")
def rm_command(
    references: Annotated[
        list[str],
        typer.Argument(
            help="Images to remove, by reference or by digest as 'apparate "
            "images' lists them (a unique prefix of the digest is enough)."
        ),
    ],
    store: StoreOption = None,
    dry_run: DryRunGcOption = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove images, and the blobs no other stored image needs.

    As 'docker rmi' does, an image that is not stored is an error, and the
    others are removed all the same.
    """
    from apparate.store.collector import GcOptions, remove_images

    _configure_logging(debug, verbose)
    with _errors_reported():
        result = remove_images(references, store, GcOptions(dry_run=dry_run))

    print(json.dumps(result.to_dict(), indent=2) if as_json else gc_report(result))
    if result.not_found:
        with _errors_reported():
            raise NotFound(
                f"{', '.join(result.not_found)}: no such image in the store "
                f"{result.store}",
                hint="'apparate images' lists the stored images",
            )


@app.command("gc")
def gc_command(
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size",
            help="Remove least recently used packs, then images, then partial "
            "downloads, until the store is at most this size, e.g. 500M or 2G. "
            "K, M, G and T are powers of 1024, and gc prints sizes in KiB, MiB "
            "and GiB.",
        ),
    ] = None,
    store: StoreOption = None,
    dry_run: DryRunGcOption = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove blobs, packs and partial downloads no image needs."""
    from apparate.store.collector import GcOptions, collect_garbage

    _configure_logging(debug, verbose)
    with _errors_reported():
        options = GcOptions(max_size=_parse_max_size(max_size), dry_run=dry_run)
        result = collect_garbage(store, options)

    print(json.dumps(result.to_dict(), indent=2) if as_json else gc_report(result))


def _parse_max_size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as error:
        raise UsageError(f"--max-size: {error}") from None


@app.command("stats")
def stats_command(
    store: StoreOption = None,
    as_json: JsonOption = False,
    limit: Annotated[
        int,
        typer.Option("--limit", help="Number of recent pulls to list, at least 1."),
    ] = 20,
    debug: DebugOption = False,
) -> None:
    """Show past pulls: bytes fetched and saved, and speed.

    Bytes saved are the layer bytes a pull did not fetch: a new tag for an
    image already stored saves all of them, a pull that found its image up to
    date saves none. Bytes a pull kept from an interrupted one are resumed,
    not saved: they crossed the network in the pull that was interrupted.
    A layer the interrupted pull stored whole counts as saved, though.
    """
    from apparate.catalog import pull_statistics

    _configure_logging(debug, False)
    with _errors_reported():
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, not {limit}")
        totals, records = pull_statistics(store, limit)

    if as_json:
        document = {
            "pulls": totals.pulls,
            "layer_bytes": totals.layer_bytes,
            "bytes_fetched": totals.bytes_fetched,
            "bytes_reused": totals.bytes_reused,
            "bytes_resumed": totals.bytes_resumed,
            "bytes_saved": totals.bytes_saved,
            "seconds": round(totals.seconds, 3),
            "recent": [
                {**dataclasses.asdict(record), "seconds": round(record.seconds, 3)}
                for record in records
            ],
        }
        print(json.dumps(document, indent=2))
        return
    print(stats_report(totals, records))


@app.command("sources")
def sources_command(
    reference: Annotated[
        str, typer.Argument(help="Image reference whose sources to rank.")
    ],
    mirror: MirrorOption = [],  # noqa: B006 - typer reads it, never mutates it
    resolving_mirror: ResolvingMirrorOption = [],  # noqa: B006 - as above
    insecure: InsecureOption = [],  # noqa: B006 - typer reads it, never mutates it
    store: StoreOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Rank the sources of an image by round trip and throughput.

    Round trips are probed now, and throughputs are those past pulls measured.
    """
    from apparate.registry.credentials import CredentialStore
    from apparate.registry.transport import TransportSettings
    from apparate.sources.selection import describe_sources
    from apparate.store.chunk_index import INDEX_FILE

    _configure_logging(debug, False)
    with _errors_reported():
        ref = Reference.parse(reference)
        root = store or default_store_path()
        figures = root / INDEX_FILE if root.is_dir() else None
        rows = describe_sources(
            ref,
            _flag_mirrors(mirror, resolving_mirror),
            load_config(),
            TransportSettings.from_environment(insecure),
            CredentialStore.from_environment(),
            figures,
        )

    if as_json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
    else:
        print(sources_report(rows))
    if all(row.rtt is None for row in rows):
        with _errors_reported(reference):
            raise RegistryUnreachable(
                f"no source of {ref} responded to the probes",
                hint="check the addresses, the network and that the registry runs",
            )


def _configure_logging(debug: bool, verbose: bool) -> None:
    """Send log records to stderr; options given before or after a command add up."""
    state["debug"] = state["debug"] or debug
    state["verbose"] = state["verbose"] or verbose
    level = logging.WARNING
    if state["verbose"]:
        level = logging.INFO
    if state["debug"]:
        level = logging.DEBUG
    handler = _StandardErrorHandler()
    handler.setFormatter(_LogFormatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    httpx_level = logging.INFO if state["debug"] else logging.WARNING
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("hpack").setLevel(logging.WARNING)


class _StandardErrorHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log handler that writes to ``sys.stderr`` as it is when each record comes.

    While progress bars are drawn, ``sys.stderr`` is replaced with a proxy
    that prints each line above the bars. A handler holding the original
    stream would write at the cursor, in the middle of the bars.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """Ignore the stream StreamHandler sets: sys.stderr is read at each record."""


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
    from apparate.registry.credentials import Credentials

    return {ref.api_host: Credentials(username, password, None)}


@contextlib.contextmanager
def _observer(quiet: bool) -> Iterator[PullObserver]:
    if quiet:
        yield PullObserver()
    elif sys.stdout.isatty() and not _dumb_terminal():
        from apparate.cli.bars import BarObserver

        with BarObserver() as bars:
            yield bars
    else:
        yield LineObserver()


def _dumb_terminal() -> bool:
    """Tell whether TERM names a terminal that cannot move the cursor.

    rich draws bars there only once the pull ends, so such a terminal gets
    a line per milestone, as a file does.
    """
    return os.environ.get("TERM", "").lower() in ("dumb", "unknown")


@contextlib.contextmanager
def _errors_reported(
    image: str | None = None, interrupted: str = "interrupted"
) -> Iterator[None]:
    """Print an apparate error as one ``error:`` line and exit with its code.

    A message that does not name ``image``, such as a store's full disk,
    gets it in front. Usage errors are about the command line, not the image.
    """
    try:
        yield
    except ApparateError as error:
        if state["debug"]:
            logging.getLogger("apparate").debug("traceback:", exc_info=True)
        message = str(error)
        about_image = image is not None and not isinstance(error, UsageError)
        if about_image and not _names_image(message, image):
            message = f"{image}: {message}"
        print(f"error: {message}", file=sys.stderr)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt as stop:
        # An import, also the one at the end of a pull, reports what its
        # target may have received.
        target = interrupted_target(stop)
        if target is not None:
            interrupted = import_interrupted(target)
        print(f"error: {interrupted}", file=sys.stderr)
        state["interrupt_reported"] = True
        raise typer.Exit(exit_code_of(stop)) from None


# The message for Ctrl-C in the commands that fetch.
FETCH_INTERRUPTED = (
    "interrupted; nothing unverified was tagged, and the same command run again "
    "resumes the downloads it kept"
)


def import_interrupted(target: ImportTarget) -> str:
    """Return the message for Ctrl-C during an import into ``target``.

    An archive file appears only once complete, by a rename, but a pipe or
    a device receives the archive as it is written.
    """
    stored = "interrupted; the image is kept in the local store"
    if target.kind == OCI:
        return stored
    if target.path is None:
        daemon = "the target" if target.kind == AUTO else target.kind
        return f"{stored}, and {daemon} may have received it already"
    if written_in_place(target.path):
        return f"{stored}, and {target.path} may have received part of the archive"
    return f"{stored}, and no partial archive was written to {target.path}"


def _names_image(message: str, image: str) -> bool:
    """Tell whether ``message`` names ``image`` as typed or in its full form."""
    if image in message:
        return True
    try:
        return str(Reference.parse(image)) in message
    except ApparateError:
        return False


def run() -> None:
    """Run the command line; usage errors become one ``error:`` line, exit 2.

    Without arguments it prints the help and exits 0, as docker does.
    ``apparate.cli.launch`` handles Ctrl-C while this module is imported.
    """
    if sys.stdout is None:
        # Python sets it to None when the descriptor was closed (`>&-`), and
        # print() then drops every line without a word.
        print("error: standard output is closed", file=sys.stderr)
        _exit_now(OutputUnwritable.exit_code)
    # SIGPIPE stays ignored, as Python sets it, so that a registry closing
    # a connection mid-upload is an error, not a silent end. The wrappers
    # end the process quietly when a reader such as `head` exits instead.
    sys.stdout = CheckedOutput(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = CheckedOutput(sys.stderr, report=False)
    try:
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
    except OutputUnwritable as error:
        # A summary is printed outside _errors_reported, so its write error
        # arrives here.
        print(f"error: {error}", file=sys.stderr)
        code = error.exit_code
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
        code = exit_code_of(None)
    if code == 130 and not state["interrupt_reported"]:
        # typer turns an interrupt outside _errors_reported, such as one
        # while printing, into exit code 130 without a word.
        print("error: interrupted", file=sys.stderr)
        code = exit_code_of(None)
    _exit_now(code if isinstance(code, int) else 0)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, which takes about 0.1 s.

    Every file of the store is closed by the time a command returns, so only
    the standard streams and log handlers need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except OutputUnwritable as error:
            # Output still buffered for a file on a full disk fails on this flush.
            with contextlib.suppress(OSError):
                print(f"error: {error}", file=sys.stderr, flush=True)
            code = code or error.exit_code
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()
