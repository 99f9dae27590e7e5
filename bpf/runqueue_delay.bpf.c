// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * runqueue_delay_ms: time a runnable task waits for a CPU, charged to the cgroup of the
 * task that waited (not to `current`, which at wakeup is the waker and at switch is prev).
 *
 * A wait ends when sched_switch picks the task as `next`, and that one hook is enough:
 * the scheduler's own bookkeeping (CONFIG_SCHED_INFO, behind delay accounting and
 * /proc/<pid>/schedstat) stamps `sched_info.last_queued` with the run queue's clock when
 * a task is queued (woken, new, or preempted) and clears it only after this tracepoint,
 * so the wait is that clock now minus the stamp. No wakeup hook runs and no per-task
 * state is kept. A wait cut by a migration counts from the move: the kernel folds the
 * part before it into `run_delay`.
 *
 * The run queue is reached through `next->se.cfs_rq->rq` (CONFIG_FAIR_GROUP_SCHED, which
 * sets it for tasks of every class): the per-CPU `runqueues` ksym would need
 * CONFIG_KALLSYMS_ALL, which many kernels (the one this was written on) lack.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(runq_event);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct runq_config);
} settings SEC(".maps");

/* Per-CPU histograms: sched_switch is the hottest hook on the node, no shared lines. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* cgroup id */
	__type(value, struct hist);
} runq_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct rate_window);
} rate_windows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static const struct hist zero_hist;

/*
 * sched_switch is the hottest hook on the node: with tp_btf the pointer chains are
 * walked with direct (probe-mem) loads instead of one bpf_probe_read_kernel() call
 * per hop, which make bench showed to dominate the program's cost.
 */
static __always_inline __u64 cgroup_of(struct task_struct *t, const bool btf)
{
	return btf ? t->cgroups->dfl_cgrp->kn->id : task_cgroup_id(t);
}

/*
 * How long `next` waited, -1 if unknown. A wait can be 0: when a wakeup preempts,
 * __schedule() skips its clock update, so the stamp and the clock agree. `btf` is a
 * constant per program: each flavour compiles only its own branch.
 */
static __always_inline __s64 waited(struct task_struct *next, const bool btf)
{
	__u64 queued, clock;
	__s64 delay;

	queued = btf ? next->sched_info.last_queued : BPF_CORE_READ(next, sched_info.last_queued);
	if (!queued)
		return -1;
	/* The clock the stamp was taken with, updated by __schedule() before the pick. */
	clock = btf ? next->se.cfs_rq->rq->clock : BPF_CORE_READ(next, se.cfs_rq, rq, clock);
	delay = clock - queued;
	return delay > 0 ? delay : 0;
}

static __always_inline void emit_slow(struct task_struct *next, __u64 pid_tgid,
				      __u64 cgroup_id, struct task_struct *prev, __u64 delay,
				      __u64 now)
{
	struct runq_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		return;
	}
	fill_header(&e->hdr, EVENT_RUNQ_SLOW, sizeof(*e), now, cgroup_id, pid_tgid);
	BPF_CORE_READ_STR_INTO(&e->hdr.comm, next, comm);
	e->delay_ns = delay;
	e->prev_cgroup_id = task_cgroup_id(prev);
	e->cpu = bpf_get_smp_processor_id();
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void switch_in(struct task_struct *prev, struct task_struct *next,
				      const bool btf)
{
	__u32 zero = 0, pid, tgid;
	struct runq_config *cfg;
	struct hist *h;
	__u64 now, delay, cgroup_id;
	__s64 wait;

	pid = btf ? next->pid : BPF_CORE_READ(next, pid);
	if (!pid)
		return;
	wait = waited(next, btf);
	if (wait < 0)
		return;
	delay = wait;
	now = bpf_ktime_get_ns();
	cgroup_id = cgroup_of(next, btf);
	h = lookup_or_init(&runq_hists, &cgroup_id, &zero_hist);
	if (h) {
		/* Per-CPU value: plain increments are safe. */
		h->slots[log2_slot(delay)]++;
		h->count++;
		h->sum_ns += delay;
	}
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || !cfg->max_events_per_sec || delay < cfg->slow_ns)
		return;
	if (!rate_allow(&rate_windows, cgroup_id, cfg->max_events_per_sec, now)) {
		count(COUNTER_RATE_LIMITED);
		return;
	}
	tgid = btf ? next->tgid : BPF_CORE_READ(next, tgid);
	emit_slow(next, (__u64)tgid << 32 | pid, cgroup_id, prev, delay, now);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runq_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_in(prev, next, true);
	return 0;
}

/* The raw_tp twin for kernels without BTF (CO-RE then relocates against --btf FILE). */

SEC("raw_tp/sched_switch")
int BPF_PROG(runq_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_in(prev, next, false);
	return 0;
}
