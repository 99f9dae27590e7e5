# LLM SLO eBPF toolkit. `make help` lists the targets.
SHELL := /bin/bash
.DELETE_ON_ERROR:

ARCH ?= x86
CLANG ?= clang
LLVM_STRIP ?= llvm-strip
VENV := .venv
PY := $(VENV)/bin/python

BPF_SRCS := $(wildcard bpf/*.bpf.c)
BPF_OBJS := $(BPF_SRCS:.c=.o)
BPF_HDRS := bpf/llm_slo.h bpf/record.h bpf/common.bpf.h vmlinux/$(ARCH)/vmlinux.h
# Reproducible objects: the checkout path is mapped to "." in the BTF line info, no DWARF.
BPF_CFLAGS := -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) \
	-Ivmlinux/$(ARCH) -Ibpf -fno-ident -fdebug-prefix-map=$(CURDIR)=.

.PHONY: help deps bpf test test-unit lint demo watch-demo bench bench-lab bench-rss vmlinux clean-lab

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## install apt packages and the virtualenv (idempotent)
	@scripts/install-deps.sh

bpf: $(BPF_OBJS) ## rebuild the BPF objects (committed; tests check they match)

bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(LLVM_STRIP) -g $@

vmlinux: ## regenerate vmlinux/$(ARCH)/vmlinux.h from this kernel's BTF
	scripts/gen-vmlinux.sh $(ARCH)

test: deps ## run every test; kernel tests need root
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: deps ## ruff over python/, tests/ and scripts/
	$(VENV)/bin/ruff check python tests scripts

demo: deps ## incident lab: four real faults in a RAG workload, attributed by the agent (~2.5 min)
	$(PY) -m llm_slo.cli lab run --scenario mixed --phases baseline=20s,fault=15s,recovery=10s \
		--out out/demo

watch-demo: deps ## watch every signal live for ~30 s while real traffic runs
	$(PY) scripts/demo.py

bench: deps ## ring-buffer, kernel-cost, RSS and correlator benchmarks into docs/benchmarks/
	$(PY) scripts/bench_ringbuf.py
	$(PY) scripts/bench_correlator.py

bench-lab: deps ## every lab scenario, 10 repetitions each: tables in docs/benchmarks/lab-reps10/, runs in out/bench-lab/ (hours)
	$(PY) scripts/bench_lab.py --reps 10 --out docs/benchmarks/lab-reps10 --raw out/bench-lab

bench-rss: deps ## the lab agent's memory over an hour of calm load, sampled every 10 s, into out/bench-rss/ (~1.2 GB of recordings)
	$(PY) scripts/bench_agent_rss.py --minutes 60 --out out/bench-rss

clean-lab: deps ## remove netns, nft tables, cgroups and processes left by tests or demo
	$(PY) -c 'from llm_slo.lab import cleanup_all; cleanup_all()'
	$(PY) -m llm_slo.cli lab clean

print-%: # `make -s print-BPF_CFLAGS`: lets the reproducibility test build exactly like `make bpf`
	@echo $($*)
