#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (or a developer laptop):
#  - Debian packages the tests and the local cloud use (mosquitto, mosquitto-clients, softhsm2, openssl,
#    socat, rauc + squashfs-tools + dbus for the RAUC installer backend); mosquitto_sub/mosquitto_pub
#    are the raw MQTT clients `roomba-fleet up` prints a line for
#  - a virtualenv in .venv with the project installed editable, with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need_apt+=(softhsm2)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v rauc >/dev/null 2>&1 || need_apt+=(rauc)
command -v mksquashfs >/dev/null 2>&1 || need_apt+=(squashfs-tools)
command -v dbus-daemon >/dev/null 2>&1 || need_apt+=(dbus)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
    echo "setup: installing Debian packages: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
        "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    for c in python3.11 python3.12 python3.13 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            PYTHON=$c; break
        fi
    done
fi
[ -n "$PYTHON" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
