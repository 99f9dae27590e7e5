// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * mem_reclaim_latency_ms (BCC fallback): direct and memcg reclaim stalls per cgroup.
 *
 * The vmscan begin/end tracepoints run synchronously in the allocating task, so
 * `current` is the task that stalled: helpers give everything and no struct is read, as
 * in the CO-RE program, whose logic this is. kswapd's background reclaim stalls no
 * request and is not counted.
 */
#include "common.bcc.h"

struct reclaim_start {
	u64 ts_ns;
	s32 order;
	u32 kind;
};

BPF_ARRAY(settings, struct reclaim_config, 1);
BPF_TABLE("hash", u64, struct reclaim_start, reclaim_starts, 16384);
BPF_TABLE("lru_hash", struct reclaim_key, struct hist, reclaim_hists, 4096);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void begin(u32 kind, int order)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct reclaim_start s = { .ts_ns = bpf_ktime_get_ns(), .order = order, .kind = kind };

	if (reclaim_starts.update(&pid_tgid, &s))
		count(COUNTER_MAP_FULL);
}

static __always_inline void end(u32 kind, u64 nr_reclaimed)
{
	u64 pid_tgid = bpf_get_current_pid_tgid(), now, delta;
	struct reclaim_key key = {};
	struct reclaim_config *cfg;
	struct reclaim_start *s;
	struct reclaim_event *e;
	struct hist *h, zero_hist = {};
	u32 zero = 0;

	s = reclaim_starts.lookup(&pid_tgid);
	if (!s)
		return;
	if (s->kind != kind)
		goto cleanup;
	now = bpf_ktime_get_ns();
	delta = now - s->ts_ns;
	if ((s64)delta < 0)
		goto cleanup;
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.kind = kind;
	h = reclaim_hists.lookup_or_try_init(&key, &zero_hist);
	if (h)
		hist_add(h, delta);
	else
		count(COUNTER_MAP_FULL);
	cfg = settings.lookup(&zero);
	/* slow_ns 0: settings not written yet (BCC attaches tracepoints at load). */
	if (!cfg || !cfg->slow_ns || delta < cfg->slow_ns)
		goto cleanup;
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		goto cleanup;
	}
	fill_header(&e->hdr, EVENT_RECLAIM, sizeof(*e), now, key.cgroup_id, pid_tgid);
	bpf_get_current_comm(&e->hdr.comm, sizeof(e->hdr.comm));
	e->latency_ns = delta;
	e->nr_reclaimed = nr_reclaimed;
	e->kind = kind;
	e->order = s->order;
	events.ringbuf_submit(e, 0);
cleanup:
	reclaim_starts.delete(&pid_tgid);
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_begin)
{
	begin(RECLAIM_DIRECT, args->order);
	return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_direct_reclaim_end)
{
	end(RECLAIM_DIRECT, args->nr_reclaimed);
	return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_begin)
{
	begin(RECLAIM_MEMCG, args->order);
	return 0;
}

TRACEPOINT_PROBE(vmscan, mm_vmscan_memcg_reclaim_end)
{
	end(RECLAIM_MEMCG, args->nr_reclaimed);
	return 0;
}
