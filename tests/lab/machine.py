"""What every lab test module needs of the machine."""

from __future__ import annotations

import os
import sys

from tests.conftest import need, need_program, need_root

LAB_PROGRAMS = ("nginx", "postfix", "dovecot", "wireguard-go", "wg", "openssl", "iptables",
                "fail2ban-server", "nft")


def need_lab(*programs: str) -> None:
    """Linux namespaces, root, /dev/net/tun and the lab's daemons (plus `programs`)."""
    need(sys.platform == "linux", "the lab needs Linux network namespaces")
    need_root()
    for program in (*LAB_PROGRAMS, *programs):
        need_program(program)
    need(os.path.exists("/dev/net/tun"), "wireguard-go needs /dev/net/tun")
