// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * runqueue_delay_ms: time a runnable task waits for a CPU, charged to the cgroup of the
 * task that waited (not to `current`, which at wakeup is the waker and at switch is prev).
 *
 * tp_btf hooks (typed arguments, no tracefs): a task becomes runnable at sched_wakeup /
 * sched_wakeup_new, or stays runnable when preempted (sched_switch with prev still
 * TASK_RUNNING); its wait ends when sched_switch picks it as `next`. With tp_btf the
 * enqueue time lives in task storage (no pid-keyed hash to overflow); the raw_tp
 * twins, for kernels without BTF, get untrusted task pointers that task storage
 * refuses, so they use a pid-keyed hash instead.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(runq_event);

#define TASK_RUNNING 0

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct runq_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} enqueued_at SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32); /* pid (thread id) */
	__type(value, __u64);
} enqueued_by_pid SEC(".maps");

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

/* task_struct::state was renamed __state in 5.14 (commit 2f064a59a11f). */
struct task_struct___o {
	volatile long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t, const bool btf)
{
	struct task_struct___o *old = (void *)t;

	if (bpf_core_field_exists(old->state))
		return BPF_CORE_READ(old, state);
	return btf ? t->__state : BPF_CORE_READ(t, __state);
}

/*
 * sched_switch is the hottest hook on the node: with tp_btf the pointer chain is
 * walked with direct (probe-mem) loads instead of one bpf_probe_read_kernel() call
 * per hop, which make bench showed to dominate the program's cost.
 */
static __always_inline __u64 cgroup_of(struct task_struct *t, const bool btf)
{
	return btf ? t->cgroups->dfl_cgrp->kn->id : task_cgroup_id(t);
}

/* `btf` is a constant per program: each flavour compiles only its own branch. */
static __always_inline void mark_enqueued(struct task_struct *t, const bool btf)
{
	__u32 pid = btf ? t->pid : BPF_CORE_READ(t, pid);
	__u64 now, *ts;

	if (!pid)
		return; /* idle task */
	now = bpf_ktime_get_ns();
	if (btf) {
		ts = bpf_task_storage_get(&enqueued_at, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (ts)
			*ts = now;
	} else if (bpf_map_update_elem(&enqueued_by_pid, &pid, &now, BPF_ANY)) {
		count(COUNTER_MAP_FULL);
	}
}

static __always_inline __u64 take_enqueued(struct task_struct *t, __u32 pid, const bool btf)
{
	__u64 *ts, v = 0;

	if (btf) {
		ts = bpf_task_storage_get(&enqueued_at, t, 0, 0);
		if (ts) {
			v = *ts;
			*ts = 0;
		}
	} else {
		ts = bpf_map_lookup_elem(&enqueued_by_pid, &pid);
		if (ts) {
			v = *ts;
			bpf_map_delete_elem(&enqueued_by_pid, &pid);
		}
	}
	return v;
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
	__u64 ts, now, delay, cgroup_id;

	if (task_state(prev, btf) == TASK_RUNNING)
		mark_enqueued(prev, btf);
	pid = btf ? next->pid : BPF_CORE_READ(next, pid);
	if (!pid)
		return;
	ts = take_enqueued(next, pid, btf);
	if (!ts)
		return;
	now = bpf_ktime_get_ns();
	delay = now - ts;
	if ((__s64)delay < 0)
		return;
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

SEC("tp_btf/sched_wakeup")
int BPF_PROG(runq_wakeup, struct task_struct *p)
{
	mark_enqueued(p, true);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(runq_wakeup_new, struct task_struct *p)
{
	mark_enqueued(p, true);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runq_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_in(prev, next, true);
	return 0;
}

/* raw_tp twins for kernels without BTF (CO-RE then relocates against --btf FILE). */

SEC("raw_tp/sched_wakeup")
int BPF_PROG(runq_wakeup_raw, struct task_struct *p)
{
	mark_enqueued(p, false);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(runq_wakeup_new_raw, struct task_struct *p)
{
	mark_enqueued(p, false);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(runq_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_in(prev, next, false);
	return 0;
}
