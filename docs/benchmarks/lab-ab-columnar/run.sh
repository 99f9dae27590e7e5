#!/bin/bash
# Clones first: git clone <repo> /tmp/ab-old && git -C /tmp/ab-old checkout 7b752cf; git clone <repo> /tmp/ab-new (a639afe); each with a .venv (make deps).
for i in 1 2; do
  for v in old new; do
    cd /tmp/ab-$v
    PYTHONPATH=/tmp/ab-$v/python .venv/bin/python -m llm_slo.cli lab run --scenario dns_latency --reps 3 --out /tmp/abcpu/$v-$i > /tmp/abcpu/$v-$i.log 2>&1
  done
done
echo finished > /tmp/abcpu/done
