"""nginx serving a registry's storage folder as the target of its redirects.

distribution's `redirect` storage middleware responds to blob requests with a 307
to `<baseurl scheme and host><storage path>`, so nginx serves the storage root
as its document root. nginx is used because the target must honour Range,
which Python's `http.server` does not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .procs import ServerProcess, free_port, wait_for_http

NGINX_CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """A foreground nginx whose config, pid file and logs live in `workdir`."""

    def __init__(self, root: Path, workdir: Path) -> None:
        binary = shutil.which("nginx")
        if binary is None:
            raise RuntimeError(
                "nginx is not installed; install the Debian package nginx-light"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        self.root = root
        self.config_path = workdir / "nginx.conf"
        self.config_path.write_text(
            NGINX_CONFIG.format(workdir=workdir, port=self.port, root=root)
        )
        # -e keeps nginx from opening the packaged error log before it reads
        # the config.
        argv = [
            binary, "-p", str(workdir), "-e", str(workdir / "error.log"),
            "-c", str(self.config_path),
        ]  # fmt: skip
        self.process = ServerProcess("nginx", argv, workdir / "nginx.out")
        try:
            wait_for_http(self.url + "/", self.process, timeout=15)
        except BaseException:
            self.process.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()
