"""The port catalogue: the table ARCHITECTURE.md promises, declared once and consistent."""

from __future__ import annotations

from mailgate import catalogue

EXPECTED = {  # service: (public, twin, default on)
    "smtp": (25, 10025, True), "submissions": (465, 10465, True),
    "submission": (587, 10587, True), "imap": (143, 10143, True),
    "imaps": (993, 10993, True), "managesieve": (4190, 14190, True),
    "pop3": (110, 10110, False), "pop3s": (995, 10995, False),
    "http": (80, 80, True), "https": (443, 443, False),  # port 80: ACME http-01 by default
}


def test_the_table_matches_the_design():
    assert {s.name: (s.public_port, s.home_port, s.default_enabled) for s in catalogue.SERVICES} == EXPECTED


def test_ports_and_names_are_unique():
    for attribute in ("name", "public_port", "home_port"):
        values = [getattr(s, attribute) for s in catalogue.SERVICES]
        assert len(values) == len(set(values)), attribute


def test_every_mail_service_uses_proxy_protocol_and_a_distinct_twin():
    for service in catalogue.SERVICES:
        if service.group == catalogue.MAIL:
            assert service.proxy_protocol and service.mailcow_variable, service.name
            assert service.home_port != service.public_port, service.name
        else:
            assert not service.proxy_protocol and service.mailcow_variable is None


def test_idle_timeouts_are_above_the_protocol_minimums():
    by_name = catalogue.BY_NAME
    assert all(by_name[n].timeout.seconds > 30 * 60 for n in ("imap", "imaps", "managesieve"))
    assert all(by_name[n].timeout.seconds > 10 * 60 for n in ("pop3", "pop3s"))
    assert all(by_name[n].timeout.seconds >= 10 * 60 for n in ("smtp", "submission", "submissions"))


def test_enabled_keeps_catalogue_order_and_web_and_port_80_follow_their_switches():
    names = lambda services: [s.name for s in services]  # noqa: E731
    assert names(catalogue.enabled(("imaps", "smtp"), False, False)) == ["smtp", "imaps"]
    assert names(catalogue.enabled(("imaps", "smtp"), False, True)) == ["smtp", "imaps", "http"]
    assert names(catalogue.enabled(("smtp",), True, True)) == ["smtp", "http", "https"]


def test_port_80_is_the_gateways_own_http_server_and_never_a_stream():
    http = catalogue.HTTP_SERVICE
    assert (http.public_port, http.home_port, http.proxy_protocol, http.gateway_http) == (80, 80, False, True)
    assert http not in catalogue.STREAM_SERVICES and http not in catalogue.PROXY_SERVICES
    assert [s for s in catalogue.SERVICES if s.gateway_http] == [http]


def test_port_map_is_plain_data_per_service():
    entry = catalogue.port_map((catalogue.BY_NAME["imaps"],))
    assert entry == [{"service": "imaps", "public_port": 993, "home_port": 10993,
                      "proxy_protocol": True, "idle_timeout_seconds": 1860, "only_path": None}]
