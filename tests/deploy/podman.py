"""Podman for the deployment tests, as ../shared/CONTAINERS.md says it runs
on our machines: runc and no default ulimits (a containers.conf of our own),
a Debian base image made from the archive when no registry is reachable
(cached, keyed on the day), and every container, network, volume and image
the tests make named with one prefix and removed at the end."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "pushd-test"
BASE_IMAGE = "debian:bookworm-slim"
NODE_IMAGE = f"localhost/{PREFIX}-node:latest"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dispatcher-deploy"
# A TLS-inspecting proxy's CA reaches pip inside a build as the secret "ca".
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""


def env() -> dict[str, str]:
    """The environment podman (and podman-compose, ansible) runs in."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(*args: str, timeout: float = 120, check: bool = True, cwd: Path | None = None,
        extra_env: dict[str, str] | None = None, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command with podman's environment; its output in the error when it fails."""
    proc = subprocess.run(args, env={**env(), **(extra_env or {})}, cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, errors="replace", input=input_)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])}... exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("podman", *args, timeout=timeout, check=check)


def _apt_mirror() -> str:
    """The machine's own Debian mirror, from its apt sources."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+", text, re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_base_image() -> None:
    """``debian:bookworm-slim`` from the registry when one answers was never
    asked for here: made with debootstrap once a day and imported."""
    today = datetime.date.today().isoformat()
    label = podman("image", "inspect", "--format", "{{index .Labels \"dispatcher.built\"}}", BASE_IMAGE,
                   check=False)
    # Ours from today, or one pulled from a registry (no label): use it.
    if label.returncode == 0 and label.stdout.strip() in (today, "", "<no value>"):
        return
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-rootfs-") as rootfs:
        run("debootstrap", "--variant=minbase", "bookworm", rootfs, _apt_mirror(), timeout=900)
        # What Docker Hub's slim image leaves out too: apt's lists and
        # caches, documentation, man pages, translations.
        run("sh", "-c", "rm -rf var/lib/apt/lists/* var/cache/apt/*.bin usr/share/doc/* usr/share/man/* "
                        "usr/share/locale/*", cwd=Path(rootfs))
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "--change", f"LABEL dispatcher.built={today}",
                                   "-", BASE_IMAGE], stdin=tar.stdout, env=env(), capture_output=True,
                                  text=True, timeout=300)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0, imported.stderr


def build(tag: str, dockerfile: Path, context: Path = ROOT, timeout: float = 1200) -> None:
    """``podman build``: Docker's image format (for HEALTHCHECK), the host's CA
    bundle as the optional secret "ca"."""
    args = ["build", "--format", "docker", "-f", str(dockerfile), "-t", tag]
    if HOST_CA.exists():
        args += ["--secret", f"id=ca,src={HOST_CA}"]
    podman(*args, str(context), timeout=timeout)


def image_size_mb(tag: str) -> float:
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return int(size) / 1e6


def cleanup(prefix: str = PREFIX) -> None:
    """Removes every container, pod, volume and network named with ``prefix``
    (not images: the next run reuses their layers)."""
    if shutil.which("podman") is None:
        return
    for kind, name_field in (("container", "{{.Names}}"), ("pod", "{{.Name}}"),
                             ("volume", "{{.Name}}"), ("network", "{{.Name}}")):
        listed = podman(kind if kind != "container" else "ps", *(["-a"] if kind == "container" else ["ls"]),
                        "--format", name_field, check=False)
        names = [n for n in listed.stdout.split() if n.startswith(prefix)]
        if names:
            rm = ["rm", "-f", *names] if kind == "container" else [kind, "rm", "-f", *names]
            podman(*rm, check=False, timeout=180)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 1.0) -> float:
    """Waits until ``check()`` is true; the seconds it took. Fails naming
    ``what`` after ``timeout_s``."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
