#!/usr/bin/env bash
# Install what `make test` and `make demo` need on a fresh Debian 12 host, idempotently:
# the apt packages (toolchain for the BPF objects, nftables and iproute2 for the kernel
# tests, OpenSSL for the TLS probe, BCC and kernel headers for the fallback loader's
# tests) and a virtualenv with the pinned Python dependencies.
# Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libbpf1 libbpf-dev bpftool nftables iproute2 openssl libssl3
              python3-venv python3-dev gcc make dnsutils procps
              python3-bpfcc "linux-headers-$(dpkg --print-architecture)")

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: missing apt packages (${missing[*]}); run as root or install them" >&2
        exit 1
    fi
    echo "install-deps: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's interpreter, so the venv matches what a Debian 12 node runs.
PYTHON=${PYTHON:-/usr/bin/python3}
stamp=.venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
    echo "install-deps: creating virtualenv .venv"
    [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi
