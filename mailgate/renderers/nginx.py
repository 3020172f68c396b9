"""The gateway's nginx config: one stream server per forwarded service, and port 80's http
server, which passes only ACME's challenge path home.

`render_nginx_stream` is the file a gateway gets in modules-enabled (the packaged
nginx.conf's main context), `render_nginx_http` the one in conf.d (inside its http block);
`render_nginx_conf` wraps both texts in a whole config for the lab and the tests, which
run nginx from a config of their own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailgate.catalogue import ACME_CHALLENGE_PATH, HTTP_SERVICE, IdleTimeout
from mailgate.renderers import render_template
from mailgate.settings import Settings

CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class NginxRuntime:
    """Where nginx keeps its process files; Ubuntu's layout unless the lab says otherwise.
    A gateway's stream file uses only `access_log` and `listen_address`; the rest is the
    packaged nginx.conf's business there, and only the lab's whole config renders it."""

    user: str = "www-data"
    pid: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    access_log: str = "/var/log/nginx/mailgate-stream.log"
    http_access_log: str = "/var/log/nginx/mailgate-http.log"
    modules_include: str = "/etc/nginx/modules-enabled/*.conf"
    worker_connections: int = 8192
    listen_address: str | None = None
    """Bind to one address instead of all (the lab's gateway namespace)."""
    listen_address6: str | None = None
    """With listen_address: the one IPv6 address to bind to as well (the lab's gateway)."""

    @property
    def ipv6_listen(self) -> str | None:
        """Where IPv6 listeners bind: all addresses, the one given, or none (None)."""
        if self.listen_address is None:
            return "[::]:"
        return f"[{self.listen_address6}]:" if self.listen_address6 else None


# The runtime deployed configs are rendered for: Ubuntu's. Only the lifecycle tests
# (tests/lifecycle) replace it, to run the deployed config in a throwaway host.
DEPLOY_RUNTIME = NginxRuntime()


def render_nginx_stream(settings: Settings, runtime: NginxRuntime | None = None,
                        idle_seconds: Mapping[IdleTimeout, int] | None = None) -> str:
    """`idle_seconds` overrides a timeout class for the lab only, so a test can watch nginx
    cut an idle session in seconds; deployments always use the catalogue's values."""
    runtime = runtime or DEPLOY_RUNTIME
    return render_template(
        "nginx-stream.conf.j2",
        runtime=runtime,
        services=[s for s in settings.enabled_services if not s.gateway_http],
        home_address=settings.home.tailnet_ip,
        listen_ipv6=runtime.ipv6_listen if settings.gateway.ipv6 else None,
        listen_ipv4=f"{runtime.listen_address}:" if runtime.listen_address else "",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        idle_seconds={timeout: timeout.seconds for timeout in IdleTimeout} | dict(idle_seconds or {}),
    )


def render_nginx_conf(settings: Settings, runtime: NginxRuntime | None = None,
                      idle_seconds: Mapping[IdleTimeout, int] | None = None) -> str:
    """A whole nginx.conf holding both files' texts, and a stand-in of the packaged default
    site where port 80 is open: for the lab and tests only."""
    runtime = runtime or DEPLOY_RUNTIME
    default_site = []
    if HTTP_SERVICE in settings.enabled_services:
        port = HTTP_SERVICE.public_port
        default_site = [f"{runtime.listen_address}:{port}" if runtime.listen_address else str(port)]
        if settings.gateway.ipv6 and runtime.ipv6_listen:
            default_site.append(f"{runtime.ipv6_listen}{port}")
    return render_template("nginx.conf.j2", runtime=runtime,
                           stream=render_nginx_stream(settings, runtime, idle_seconds),
                           http=render_nginx_http(settings, runtime), default_site=default_site)


def render_nginx_http(settings: Settings, runtime: NginxRuntime | None = None) -> str:
    """Port 80's server (conf.d, inside the packaged http block), or a comment when port 80
    is closed: the file is always laid down, so closing the port is a change like another."""
    runtime = runtime or DEPLOY_RUNTIME
    service = HTTP_SERVICE if HTTP_SERVICE in settings.enabled_services else None
    return render_template(
        "nginx-http.conf.j2",
        runtime=runtime,
        service=service,
        names=settings.certificate_names,
        home_address=settings.home.tailnet_ip,
        listen_ipv6=runtime.ipv6_listen if settings.gateway.ipv6 else None,
        listen_ipv4=f"{runtime.listen_address}:" if runtime.listen_address else "",
        challenge_path=ACME_CHALLENGE_PATH,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        redirect=settings.mail_hostname if settings.web.enabled else None,
    )
