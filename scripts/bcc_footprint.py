#!/usr/bin/env python3
"""What the BCC fallback costs at start: time to open every probe, and peak RSS.

Opens the whole probe set twice, each in a fresh process: with the CO-RE objects
(``attach_mode=tp_btf``, so it needs kernel BTF) and with ``attach_mode=bcc``, compiled
against ``--kernel-headers DIR`` or the running kernel's headers. Needs root. Prints one
JSON line per loader.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from llm_slo.events import SIGNALS
from llm_slo.probes import ProbeOptions, ProbeSet
mode, headers = sys.argv[1], sys.argv[2] or None
t0 = time.monotonic()
with ProbeSet(SIGNALS, ProbeOptions(attach_mode=mode, kernel_headers=headers)) as ps:
    print(json.dumps({"attach_mode": mode, "open_s": round(time.monotonic() - t0, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024, 1),
                      "failures": ps.failures}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kernel-headers", default="", metavar="DIR",
                   help="header tree for BCC (default: the running kernel's)")
    args = p.parse_args()
    for mode in ("tp_btf", "bcc"):
        r = subprocess.run([sys.executable, "-c", CHILD, mode, args.kernel_headers],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            sys.stderr.write(r.stderr)
            return r.returncode
        print(r.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
