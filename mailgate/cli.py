"""`python -m mailgate`: render the files mailgate lays down, for review, without a cloud."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
from pathlib import Path

from mailgate import catalogue
from mailgate import docs as docs_module
from mailgate.config_report import ConfigError
from mailgate.deployment import PLACEHOLDER_GATEWAY_TAILNET_IP, PUBLIC_IPV4_PLACEHOLDER, Deployment
from mailgate.lab import DEFAULT_IMAP_IDLE, NGINX_DEFAULT_PROXY_TIMEOUT, SHORT_IMAP_TIMEOUT
from mailgate.layout import all_files
from mailgate.renderers.dns import dns_records, render_dns_records
from mailgate.settings import TAILNET_RANGES, Settings, load_settings
from mailgate.stackfile import read_stack_file


def stack_name(path: Path) -> str:
    """`Pulumi.prod.yaml` -> `prod`, as the Pulumi CLI names a stack's config file."""
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.startswith("Pulumi.") and name.endswith(suffix) and len(name) > len("Pulumi." + suffix):
            return name[len("Pulumi."):-len(suffix)]
    return path.stem


def load_stack(path: Path) -> Settings:
    # Secrets are placeholders in a render, so a stack without them yet still renders.
    stack = read_stack_file(path)
    return load_settings(stack.values, stack=stack_name(path), extra_problems=stack.problems,
                         known_secrets=stack.secrets_present)


def _address(version: int, tailnet: bool = False):
    def parse(text: str) -> str:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
        if address.version != version:
            raise argparse.ArgumentTypeError(f"{text} is not an IPv{version} address")
        if tailnet and not any(address in net for net in TAILNET_RANGES):
            raise argparse.ArgumentTypeError(f"{text} is outside Tailscale's 100.64.0.0/10")
        return str(address)

    return parse


def _any_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("Pulumi.dev.yaml"),
                        help="Pulumi stack file to read (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mailgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render",
        help="write every file mailgate would lay down under a directory, for review",
        description="Render every file for the stack config into OUT, mirroring where each "
        "file goes (gateway/..., home/..., publish/...). Secrets appear as placeholders.",
    )
    _config_option(render)
    render.add_argument("--out", type=Path, required=True, help="directory to write into")
    render.add_argument("--gateway-tailnet-ip", type=_address(4, tailnet=True),
                        default=PLACEHOLDER_GATEWAY_TAILNET_IP,
                        help="the gateway's tailnet IPv4, known after `pulumi up` "
                        "(default: %(default)s)")
    render.add_argument("--public-ipv4", type=_address(4), default=None,
                        help="the gateway's reserved public IPv4 for the DNS records "
                        "(default: a placeholder)")
    render.add_argument("--public-ipv6", type=_address(6), default=None,
                        help="the gateway's public IPv6, when IPv6 is enabled")
    docs = commands.add_parser(
        "docs",
        help="refresh the README's configuration table and Pulumi.yaml from the models",
    )
    docs.add_argument("--write", action="store_true", help="write the files (else only report)")
    docs.add_argument("--root", type=Path, default=Path("."), help="project directory")
    doctor = commands.add_parser(
        "doctor", help="check a live deployment from the outside, and say what to fix",
        description="Check DNS, every public port, greetings, certificates and relaying from "
        "here, as the internet sees them; with --ssh also the tunnel, the home filter, the "
        "relay login, the queue and that your real address reaches Postfix and Dovecot. "
        "Exit status 1 when any check fails.")
    _config_option(doctor)
    doctor.add_argument("--outputs", type=Path, default=None, metavar="FILE",
                        help="the deployed values as `pulumi stack output --json` prints them "
                        "(- for stdin)")
    doctor.add_argument("--public-ipv4", type=_address(4), default=None,
                        help="the gateway's public IPv4 (default: public_ipv4 from --outputs)")
    doctor.add_argument("--public-ipv6", type=_address(6), default=None,
                        help="the gateway's public IPv6 (default: public_ipv6 from --outputs)")
    doctor.add_argument("--resolver", type=_any_address, action="append", default=[], metavar="IP",
                        help="ask this DNS server (repeatable; default: the system's resolver)")
    doctor.add_argument("--ca-file", type=Path, default=None, metavar="PEM",
                        help="also trust these CAs (a private CA) when verifying certificates")
    doctor.add_argument("--ssh", action="store_true",
                        help="also check from the inside, over SSH: the Mini PC as the remote steps "
                        "reach it (~/.ssh/mailgate_home) and the gateway as ubuntu@<gateway_tailnet_ip> "
                        "(~/.ssh/mailgate_gateway), over the tailnet")
    doctor.add_argument("--home-exec", default=None, metavar="CMD",
                        help="with --ssh: run the Mini PC's commands with CMD instead (it must run its "
                        "arguments as root there, e.g. 'ssh -p 2222 root@minipc')")
    doctor.add_argument("--gateway-exec", default=None, metavar="CMD",
                        help="with --ssh: the same for the gateway")
    doctor.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="for each connection and query (default: %(default)s)")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of the table")
    lab = commands.add_parser(
        "lab", help="the whole mail path in network namespaces on this machine (root, Linux)",
        description="Build the lab from the stack's rendered files (up), prove the design's "
        "promises from outside (check), show it (status), remove every trace (down).")
    lab.add_argument("action", choices=("up", "check", "down", "status", "bench", "tune", "acme", "doctor"),
                     help="bench: measure the data path (docs/performance.md); tune: try the "
                     "gateway's nginx settings one by one against the rendered config; "
                     "acme: on a lab just up, issue a certificate for mailHostname from a "
                     "lab ACME CA (pebble) through the gateway's port 80, with acme-tiny at home; "
                     "doctor: run `mailgate doctor --ssh` against the lab from outside (DNS, "
                     "certificates and home's docker stand-in added on first use)")
    _config_option(lab)
    shortest, longest = SHORT_IMAP_TIMEOUT[0], SHORT_IMAP_TIMEOUT[-1]
    lab.add_argument("--imap-timeout", type=int, default=None, metavar="SECONDS",
                     help=f"up: render nginx's IMAP idle timeout as SECONDS ({shortest}-{longest}) "
                     "instead of the catalogue's, so check can watch it cut a session "
                     "(default: as rendered)")
    lab.add_argument("--imap-idle", type=float, default=None, metavar="SECONDS",
                     help=f"check: how long an IMAP session sits idle through the gateway and must "
                     f"survive (default: {DEFAULT_IMAP_IDLE}, beyond nginx's "
                     f"{NGINX_DEFAULT_PROXY_TIMEOUT} s default; after up --imap-timeout the check "
                     "picks its own times)")
    return parser


def run_lab(args: argparse.Namespace) -> int:
    from mailgate.lab import lab
    from mailgate.lab.checks import run_checks
    from mailgate.lab.system import LabError, exclusive

    if args.imap_timeout is not None and args.imap_timeout not in SHORT_IMAP_TIMEOUT:
        print(f"mailgate lab: --imap-timeout {args.imap_timeout}: expected "
              f"{SHORT_IMAP_TIMEOUT[0]} to {SHORT_IMAP_TIMEOUT[-1]} seconds", file=sys.stderr)
        return 2
    try:
        if args.action == "status":  # only reads, so it need not wait for a running check
            print("\n".join(lab.status()))
            return 0
        with exclusive():
            return _lab_action(args, lab, run_checks)
    except LabError as error:
        print(f"mailgate lab: {error}", file=sys.stderr)
        return 1


def _lab_action(args: argparse.Namespace, lab, run_checks) -> int:
    if args.action == "down":
        lab.down()
        print("lab: removed")
    elif args.action == "bench":
        from mailgate.lab.bench import bench

        print("\n".join(bench()))
    elif args.action == "tune":
        from mailgate.lab.tune import tune

        print("\n".join(tune()))
    elif args.action == "acme":
        from mailgate.lab import acme_checks

        results = acme_checks.run_checks(lab.lab_settings(load_stack(args.config)))
        for result in results:
            print(result.line())
        failed = sum(not r.passed for r in results)
        print(f"{len(results) - failed} passed, {failed} failed")
        return 1 if failed else 0
    elif args.action == "doctor":
        from mailgate.lab import doctor_lab

        settings = lab.lab_settings(load_stack(args.config))
        if not doctor_lab.prepared():
            doctor_lab.prepare(settings, args.config)
        status, answer, seconds = doctor_lab.run_doctor(settings)
        print(doctor_lab.table(answer), end="")
        print(f"doctor: exit {status} after {seconds:.1f} s")
        return status
    elif args.action == "up":
        lab.up(load_stack(args.config), imap_timeout=args.imap_timeout)
        print("lab: up (python -m mailgate lab check proves it, lab down removes it)")
    else:
        results = run_checks(lab.lab_settings(load_stack(args.config)), imap_idle=args.imap_idle)
        for result in results:
            print(result.line())
        failed = sum(not r.passed for r in results)
        print(f"{len(results) - failed} passed, {failed} failed")
        return 1 if failed else 0
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from mailgate.doctor import report, run, target as targets

    settings = load_stack(args.config)
    outputs = targets.read_outputs(args.outputs) if args.outputs else {}
    problems = []
    public_ipv4 = args.public_ipv4 or outputs.get("public_ipv4")
    if not public_ipv4:
        problems.append("the gateway's public address is unknown: give --outputs (`pulumi stack output "
                        "--json > outputs.json`) or --public-ipv4")
    if args.timeout <= 0 or args.timeout > 60:
        problems.append(f"--timeout {args.timeout}: expected 0 to 60 seconds")
    if args.ca_file and not args.ca_file.is_file():
        problems.append(f"--ca-file {args.ca_file}: no such file")
    if (args.home_exec or args.gateway_exec) and not args.ssh:
        problems.append("--home-exec and --gateway-exec need --ssh")
    if problems:
        raise ConfigError(problems)
    # Its tailnet address needs no MagicDNS; its machine name does.
    gateway_host = outputs.get("gateway_tailnet_ip") or outputs.get("gateway_machine_name")
    target = targets.Target(
        settings=settings, public_ipv4=public_ipv4, timeout=args.timeout,
        public_ipv6=args.public_ipv6 or outputs.get("public_ipv6"),
        gateway_tailnet_ip=outputs.get("gateway_tailnet_ip"), resolvers=tuple(args.resolver),
        ca_file=str(args.ca_file) if args.ca_file else None,
        home=targets.home_remote(settings, gateway_host, args.timeout, args.home_exec) if args.ssh else None,
        gateway=targets.gateway_remote(gateway_host, args.timeout, args.gateway_exec) if args.ssh else None,
    )
    findings = run.run(target)
    print(report.as_json(findings) if args.json else report.as_table(findings), end="", flush=True)
    status = 1 if report.failed(findings) else 0
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        os._exit(status)  # a check past the overall limit is reported; the run does not wait for it
    return status


def refresh_docs(args: argparse.Namespace) -> int:
    if not args.write:
        stale = docs_module.stale(args.root)
        for path in stale:
            print(f"{path} is stale; run `python -m mailgate docs --write`")
        return 1 if stale else 0
    for path in docs_module.write(args.root):
        print(f"updated {path}")
    return 0


RENDER_MARKER = ".mailgate-render"


def prepare_out_dir(out: Path, new_files: list[str]) -> None:
    """Render only into an empty directory or one an earlier render made; remove the
    earlier render's files that this one no longer has (e.g. after turning IPv6 off)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError([f"--out {out}: not a directory"])
    marker = out / RENDER_MARKER
    if not marker.exists():
        if any(out.iterdir()):
            raise ConfigError([
                f"--out {out}: not empty and not made by `mailgate render`; "
                "expected a new or empty directory"
            ])
        return
    for old in marker.read_text(encoding="utf-8").split():
        if old not in new_files and not old.startswith(("/", "..")) and ".." not in old.split("/"):
            (out / old).unlink(missing_ok=True)


def render(args: argparse.Namespace) -> int:
    settings = load_stack(args.config)
    deployment = Deployment(
        args.gateway_tailnet_ip, args.public_ipv4 or PUBLIC_IPV4_PLACEHOLDER, args.public_ipv6
    )
    files = all_files(settings, deployment)
    relative = [f"{rendered.host}/{rendered.path.lstrip('/')}" for rendered in files]
    prepare_out_dir(args.out, relative)
    for rendered, path in zip(files, relative):
        target = args.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered.text, encoding="utf-8")
        target.chmod(rendered.mode)
    (args.out / RENDER_MARKER).write_text("\n".join(relative) + "\n", encoding="utf-8")
    print(f"Rendered {len(files)} files under {args.out}/ (secrets are placeholders):")
    for rendered in files:
        print(f"  {rendered.host}/{rendered.path.lstrip('/')}")
    print("\nPort map (public port on the gateway -> port at home):")
    for entry in catalogue.port_map(settings.enabled_services):
        proxy = "PROXY" if entry["proxy_protocol"] else "plain"
        only = f"  only {entry['only_path']}" if entry["only_path"] else ""
        print(f"  {entry['service']:<12} {entry['public_port']:>5} -> {settings.home.tailnet_ip}:"
              f"{entry['home_port']:<6} {proxy:<5} idle {entry['idle_timeout_seconds']}s{only}")
    print("\n" + render_dns_records(dns_records(settings, deployment)), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "docs":
            return refresh_docs(args)
        if args.command == "lab":
            return run_lab(args)
        if args.command == "doctor":
            return run_doctor(args)
        return render(args)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 2
    except OSError as error:
        print(f"mailgate: {error}", file=sys.stderr)
        return 1



