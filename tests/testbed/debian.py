"""Make Debian root filesystems with debootstrap and apt in a chroot.

The mirror comes from this machine's own apt sources, so the build uses
whatever mirror or proxy the machine is set up for.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MIRROR_ENV = "APPARATE_DEBIAN_MIRROR"
APT_SOURCES = "/etc/apt/sources.list"
APT_SOURCES_DIR = "/etc/apt/sources.list.d"
CHROOT_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND=noninteractive",
    "LC_ALL=C.UTF-8",
]
# Stops services from starting when packages are installed into the chroot.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


class MirrorNotFound(RuntimeError):
    pass


def mirror_url(suite: str = "bookworm") -> str:
    """Return the Debian mirror URL that apt on this machine uses for `suite`.

    `APPARATE_DEBIAN_MIRROR` overrides it.
    """
    override = os.environ.get(MIRROR_ENV)
    if override:
        return override
    for path in sorted(glob.glob(f"{APT_SOURCES_DIR}/*.sources")):
        found = _mirror_from_deb822(Path(path).read_text(), suite)
        if found:
            return found
    list_files = [APT_SOURCES] + sorted(glob.glob(f"{APT_SOURCES_DIR}/*.list"))
    for path in list_files:
        if os.path.exists(path):
            found = _mirror_from_one_line(Path(path).read_text(), suite)
            if found:
                return found
    raise MirrorNotFound(
        f"no apt source for the Debian suite {suite!r} in {APT_SOURCES} or "
        f"{APT_SOURCES_DIR}; set {MIRROR_ENV} to a Debian mirror URL"
    )


def _mirror_from_deb822(text: str, suite: str) -> str | None:
    """Find `suite` in a deb822 `.sources` file (stanzas split by blank lines)."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    return None


def _mirror_from_one_line(text: str, suite: str) -> str | None:
    """Find `suite` in a one-line-style `sources.list`."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            return words[0]
    return None


def bootstrap_all(
    targets: Sequence[tuple[Path, str, bool]], suite: str, mirror: str, logs: Path
) -> None:
    """Run one debootstrap per (target, architecture, foreign) at the same time.

    A foreign run does the first stage only: it unpacks the packages of another
    architecture without running any of its programs, so no emulator is needed.
    """
    runs = []
    for target, architecture, foreign in targets:
        argv = ["debootstrap", "--variant=minbase", f"--arch={architecture}"]
        if foreign:
            argv.append("--foreign")
        argv += [suite, str(target), mirror]
        log_path = logs / f"debootstrap-{architecture}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        runs.append((argv, process, log_path))
    failures = []
    for argv, process, log_path in runs:
        if process.wait() != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            failures.append(f"{' '.join(argv)} failed ({process.returncode}):\n{tail}")
    if failures:
        raise RuntimeError("\n".join(failures))


def clean_rootfs(root: Path) -> None:
    """Drop what image builders drop: apt caches, package lists, host files.

    debootstrap copies the host's /etc/resolv.conf and /etc/hostname into the
    target; container runtimes replace both, so the image keeps neutral ones.
    """
    _remove_contents(
        root / "var" / "cache" / "apt" / "archives", keep={"partial", "lock"}
    )
    _remove_contents(root / "var" / "lib" / "apt" / "lists", keep={"partial", "lock"})
    for cache in (root / "var" / "cache" / "apt").glob("*.bin"):
        cache.unlink()
    shutil.rmtree(root / "debootstrap", ignore_errors=True)
    (root / "etc" / "hostname").write_text("apparate-sample\n")
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")


def slim_rootfs(root: Path) -> None:
    """Drop documentation, man pages and translations, keeping copyrights.

    This is what Debian's `-slim` images leave out, and it keeps each sample
    layer near 30 MB compressed.
    """
    share = root / "usr" / "share"
    for package_docs in (share / "doc").iterdir():
        if package_docs.is_dir() and not package_docs.is_symlink():
            _remove_contents(package_docs, keep={"copyright"})
    for folder in ("man", "info", "groff", "linda", "lintian"):
        _remove_contents(share / folder, keep=set())
    _remove_contents(share / "locale", keep={"locale.alias"})


def _remove_contents(folder: Path, keep: Iterable[str]) -> None:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def install_packages(root: Path, packages: Sequence[str], log_path: Path) -> None:
    """Install `packages` into the rootfs at `root` with apt-get in a chroot.

    Maintainer scripts need /proc, so it is mounted for the duration and
    always unmounted again, even when apt fails.
    """
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    policy = root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        with open(log_path, "wb") as log_file:
            for apt_args in (
                ["update"],
                ["install", "-y", "--no-install-recommends", *packages],
                ["clean"],
            ):
                argv = ["chroot", str(root), "env", "-i", *CHROOT_ENV, "apt-get", "-q"]
                subprocess.run(
                    argv + apt_args,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    check=True,
                )
    except subprocess.CalledProcessError as error:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(error.cmd)} failed:\n{tail}") from error
    finally:
        unmount(proc)
        policy.unlink()


def unmount(path: Path) -> None:
    """Unmount `path`, lazily if it is busy."""
    result = subprocess.run(
        ["umount", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        log.warning("umount %s failed (%s); detaching it lazily", path, result.stderr)
        subprocess.run(["umount", "-l", str(path)], check=True)


def mounts_below(path: Path) -> list[Path]:
    """List the mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a build folder, unmounting anything left mounted inside it first.

    A build that was killed mid-install can leave /proc mounted in a chroot,
    and deleting through that mount would reach the host's /proc.
    """
    if not path.exists():
        return
    for point in mounts_below(path):
        unmount(point)
    shutil.rmtree(path)
