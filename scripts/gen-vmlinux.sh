#!/usr/bin/env bash
# Regenerate vmlinux/<arch>/vmlinux.h from a BTF source (default: this kernel's BTF).
# CO-RE relocates field offsets at load time, so one header serves every kernel with BTF.
set -euo pipefail
arch=${1:-x86}
btf=${2:-/sys/kernel/btf/vmlinux}
cd "$(dirname "$0")/.."
mkdir -p "vmlinux/$arch"
bpftool btf dump file "$btf" format c > "vmlinux/$arch/vmlinux.h.tmp"
mv "vmlinux/$arch/vmlinux.h.tmp" "vmlinux/$arch/vmlinux.h"
echo "wrote vmlinux/$arch/vmlinux.h from $btf ($(uname -r))"
