// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * runqueue_delay_ms (BCC fallback): wait-for-CPU time per cgroup, from the classic
 * sched tracepoints.
 *
 * The CO-RE program reads the woken or switched-in task's cgroup from its task_struct.
 * Without dereferencing kernel structs that is only known while the task runs: at
 * sched_switch `current` is `prev`, so each switch records prev's cgroup, pid_tgid and
 * comm under its pid, and a wait is charged from that record when the task is switched
 * back in. A task that has not run since the probe loaded has no record yet: its first
 * wait is skipped.
 */
#include "common.bcc.h"

/* sched_switch's prev_state for a preempted task: TASK_REPORT_MAX, (TASK_REPORT + 1) << 1,
 * the "R+" of its print format; defined here rather than taken from <linux/sched.h>, whose
 * other contents the fallback must not depend on. */
#define TASK_REPORT_MAX 0x100

struct task_owner {
	u64 cgroup_id;
	u64 pid_tgid;
};

BPF_ARRAY(settings, struct runq_config, 1);
BPF_TABLE("hash", u32, u64, enqueued_by_pid, 65536);
BPF_TABLE("lru_hash", u32, struct task_owner, owners, 65536);
BPF_TABLE("lru_percpu_hash", u64, struct hist, runq_hists, 4096);
BPF_TABLE("lru_hash", u64, struct rate_window, rate_windows, 4096);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void mark_enqueued(u32 pid)
{
	u64 now = bpf_ktime_get_ns();

	if (pid && enqueued_by_pid.update(&pid, &now))
		count(COUNTER_MAP_FULL);
}

static __always_inline bool allow_event(u64 cgroup_id, u32 limit, u64 now)
{
	struct rate_window zero = {};
	struct rate_window *w = rate_windows.lookup_or_try_init(&cgroup_id, &zero);

	if (!w) {
		count(COUNTER_MAP_FULL);
		return false;
	}
	return rate_take(w, limit, now);
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
	mark_enqueued(args->pid);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
	mark_enqueued(args->pid);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
	u32 prev = args->prev_pid, next = args->next_pid, zero = 0;
	u64 now = bpf_ktime_get_ns(), prev_cgroup = bpf_get_current_cgroup_id();
	struct task_owner *o;
	struct runq_config *cfg;
	struct runq_event *e;
	struct hist *h, zero_hist = {};
	u64 *ts, delay;
	long state = args->prev_state;

	if (prev) {
		struct task_owner now_prev = { .cgroup_id = prev_cgroup,
					       .pid_tgid = bpf_get_current_pid_tgid() };

		/* Written only when it changed (a cgroup move, a reused pid): an update on
		 * every context switch of the node would cost more than this lookup. */
		o = owners.lookup(&prev);
		if ((!o || o->cgroup_id != now_prev.cgroup_id || o->pid_tgid != now_prev.pid_tgid)
		    && owners.update(&prev, &now_prev))
			count(COUNTER_MAP_FULL);
		/* Preempted (reported as TASK_REPORT_MAX) or yielding: still runnable. */
		if (state == 0 || (state & TASK_REPORT_MAX))
			mark_enqueued(prev);
	}
	if (!next)
		return 0;
	ts = enqueued_by_pid.lookup(&next);
	if (!ts)
		return 0;
	delay = now - *ts;
	enqueued_by_pid.delete(&next);
	o = owners.lookup(&next);
	if (!o || (s64)delay < 0)
		return 0;
	h = runq_hists.lookup_or_try_init(&o->cgroup_id, &zero_hist);
	if (!h) {
		count(COUNTER_MAP_FULL);
	} else {
		h->slots[log2_slot(delay)]++;
		h->count++;
		h->sum_ns += delay;
	}
	cfg = settings.lookup(&zero);
	if (!cfg || !cfg->max_events_per_sec || delay < cfg->slow_ns)
		return 0;
	if (!allow_event(o->cgroup_id, cfg->max_events_per_sec, now)) {
		count(COUNTER_RATE_LIMITED);
		return 0;
	}
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		return 0;
	}
	fill_header(&e->hdr, EVENT_RUNQ_SLOW, sizeof(*e), now, o->cgroup_id, o->pid_tgid);
	bpf_probe_read_kernel(e->hdr.comm, sizeof(e->hdr.comm), args->next_comm);
	e->delay_ns = delay;
	e->prev_cgroup_id = prev_cgroup;
	e->cpu = bpf_get_smp_processor_id();
	e->_pad = 0;
	events.ringbuf_submit(e, 0);
	return 0;
}
