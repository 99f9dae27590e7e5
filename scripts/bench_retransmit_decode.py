#!/usr/bin/env python3
"""CPU of turning a ``retransmits`` map snapshot into per-interval aggregates.

Synthetic map contents, benchmark only: ``--flows`` entries (one per flow that ever
retransmitted, as the LRU map keeps them), 2 % of them retransmitting again between two
polls. Prints the thread CPU per poll of ``decode.retransmit_aggregates``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llm_slo import abi, decode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--flows", type=int, default=5000)
    p.add_argument("--polls", type=int, default=20)
    args = p.parse_args()
    keys = np.zeros(args.flows, dtype=abi.RETRANS_KEY)
    keys["cgroup_id"] = np.arange(args.flows)  # distinct keys
    counts = np.arange(args.flows, dtype=np.uint64)
    differ = decode.Differ()
    decode.retransmit_aggregates(keys, counts, differ, 0)
    again = (np.arange(args.flows) % 50 == 0).astype(np.uint64)
    t0 = time.thread_time()
    for poll in range(args.polls):
        counts = counts + again
        decode.retransmit_aggregates(keys, counts, differ, poll + 1)
    per_poll = (time.thread_time() - t0) / args.polls
    print(f"{args.flows} flows: {per_poll * 1e3:.2f} ms of CPU per poll")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
