#!/bin/bash
# Agent CPU before and after the profile fixes of e4faecd, back to back (2026-12-03).
# Clones first: git clone <repo> /tmp/ab-old && git -C /tmp/ab-old checkout 4c3f656;
# git clone <repo> /tmp/ab-new (d59ea13); both use one venv (make deps).
# Alternates which side goes first, so a slow stretch of the VM hits both.
out=/tmp/bench-out/ab; mkdir -p $out
for i in 1 2 3 4; do
  for side in old new; do
    [ $((i % 2)) -eq 0 ] && { [ $side = old ] && side=new || side=old; }
    cd /tmp/ab-$side
    PYTHONPATH=/tmp/ab-$side/python /work/main/.venv/bin/python -m llm_slo.cli lab run \
      --scenario dns_latency --reps 1 --out $out/$side-$i > $out/$side-$i.log 2>&1
    echo "$side-$i $(python3 -c "import json;print(json.load(open('$out/$side-$i/summary.json'))['overhead']['cpu_pct'])")"
  done
done
