"""The gateway's nginx stream config: one stream server per enabled service.

`render_nginx_stream` is the file a gateway gets (modules-enabled, beside the packaged
nginx.conf); `render_nginx_conf` wraps the same text in a whole config for the lab and
the tests, which run nginx from a config of their own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mailgate.catalogue import IdleTimeout
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
    modules_include: str = "/etc/nginx/modules-enabled/*.conf"
    worker_connections: int = 8192
    listen_address: str | None = None
    """Bind to one address instead of all (the lab's gateway namespace)."""


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
        services=settings.enabled_services,
        home_address=settings.home.tailnet_ip,
        ipv6=settings.gateway.ipv6 and runtime.listen_address is None,
        listen_ipv4=f"{runtime.listen_address}:" if runtime.listen_address else "",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        idle_seconds={timeout: timeout.seconds for timeout in IdleTimeout} | dict(idle_seconds or {}),
    )


def render_nginx_conf(settings: Settings, runtime: NginxRuntime | None = None,
                      idle_seconds: Mapping[IdleTimeout, int] | None = None) -> str:
    """A whole nginx.conf holding the stream file's text: for the lab and tests only."""
    runtime = runtime or DEPLOY_RUNTIME
    return render_template("nginx.conf.j2", runtime=runtime,
                           stream=render_nginx_stream(settings, runtime, idle_seconds))
