"""The gateway's cloud-init user data (packages, the OCI iptables fix, joining the
tailnet) and the enrolment object each gateway VM fetches at its first boot.

Only the bootstrap lives here. Everything that changes over time (nginx config, the
port firewall) is pushed over SSH, so editing the port list never replaces the VM. The
user data holds no tailnet key: a key in it would be minted before the VM and be expired
or spent when a VM is created later (a capacity retry, a rebuild). Instead the user data
names the stack's bootstrap bucket (a read-only pre-authenticated URL), and `pulumi up`
writes each VM's enrolment there after creating that VM.
"""

from __future__ import annotations

import base64
import re

from mailgate.renderers import render_template
from mailgate.settings import Settings

# The chain that cloud-init hooks into INPUT and the gateway firewall file fills.
GATEWAY_INPUT_CHAIN = "MAILGATE-IN"
BOOTSTRAP_URL_PATH = "/etc/mailgate/bootstrap-url"
JOIN_SCRIPT_PATH = "/usr/local/sbin/mailgate-join"
AUTH_KEY_PATH = "/run/mailgate/tailscale-auth-key"
# Where sshd finds its ed25519 host key (Ubuntu's default HostKey list includes it).
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
# Oracle's instance metadata service (v2): the VM's own OCID, the enrolment's object name.
IMDS_INSTANCE_ID = "http://169.254.169.254/opc/v2/instance/id"
GATEWAY_PACKAGES = ("nginx", "libnginx-mod-stream", "iptables-persistent", "unattended-upgrades",
                    "curl", "gnupg")
# How long a first boot waits for egress and its enrolment: 30 minutes.
ENROLMENT_WAIT_SECONDS, ENROLMENT_WAIT_TRIES = 10, 180
URL = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/:%-]*/$")
MACHINE_NAME = re.compile(r"^[a-z0-9-]{1,63}$")


def render_join_script(settings: Settings) -> str:
    return render_template(
        "scripts/gateway-join.sh.j2",
        key_path=AUTH_KEY_PATH,
        host_key_path=HOST_KEY_PATH,
        url_path=BOOTSTRAP_URL_PATH,
        imds_instance_id=IMDS_INSTANCE_ID,
        wait_tries=ENROLMENT_WAIT_TRIES,
        wait_seconds=ENROLMENT_WAIT_SECONDS,
        packages=GATEWAY_PACKAGES,
        tag=settings.tailscale.gateway_tag,
    )


def render_cloud_init(settings: Settings, bootstrap_url: str) -> str:
    """`bootstrap_url`: the bucket's read-only pre-authenticated URL, ending in '/'."""
    if not URL.match(bootstrap_url):
        raise ValueError(f"the bootstrap URL {bootstrap_url!r} is not an https URL of a bucket ending in '/'")
    return render_template(
        "cloud-init.yaml.j2",
        bootstrap_url=bootstrap_url,
        url_path=BOOTSTRAP_URL_PATH,
        join_path=JOIN_SCRIPT_PATH,
        join_script=render_join_script(settings),
        chain=GATEWAY_INPUT_CHAIN,
    )


def render_enrolment(auth_key: str, machine_name: str, host_key: str) -> str:
    """The object one gateway VM fetches at first boot: its tailnet key, its machine name
    and its SSH host key (OpenSSH private key; one base64 line here), which every
    connection to the gateway pins."""
    if not auth_key or any(c.isspace() or c == "=" for c in auth_key):
        raise ValueError("the Tailscale auth key must be one non-empty word")
    if not MACHINE_NAME.match(machine_name):
        raise ValueError(f"{machine_name!r} is not a tailnet machine name")
    if "OPENSSH PRIVATE KEY" not in host_key:
        raise ValueError("the gateway's host key must be an OpenSSH private key")
    encoded = base64.b64encode(host_key.encode()).decode()
    return f"TS_AUTHKEY={auth_key}\nTS_HOSTNAME={machine_name}\nSSH_HOST_KEY={encoded}\n"
