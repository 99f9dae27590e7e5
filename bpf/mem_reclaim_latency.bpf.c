// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * mem_reclaim_latency_ms: time a task spends in direct reclaim (global memory shortage)
 * or memcg reclaim (its memory cgroup hit the limit).
 *
 * The vmscan begin/end tracepoints run synchronously in the allocating task, so
 * `current` is the task that stalled and its cgroup is the right one to charge;
 * that holds for the raw_tp twins too, which is why they need no task pointer.
 * Background kswapd reclaim is deliberately not counted: it stalls no request.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(reclaim_event);

struct reclaim_start {
	__u64 ts_ns;
	__s32 order;
	__u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reclaim_config);
} settings SEC(".maps");

/* Keyed by pid_tgid, not task storage: the raw_tp twins get no trusted task pointer. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct reclaim_start);
} reclaim_starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct reclaim_key);
	__type(value, struct hist);
} reclaim_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static const struct hist zero_hist;

static __always_inline void begin(__u32 kind, int order)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct reclaim_start s = { .ts_ns = bpf_ktime_get_ns(), .order = order, .kind = kind };

	if (bpf_map_update_elem(&reclaim_starts, &pid_tgid, &s, BPF_ANY))
		count(COUNTER_MAP_FULL);
}

static __always_inline void end(__u32 kind, __u64 nr_reclaimed)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct reclaim_key key = {};
	struct reclaim_config *cfg;
	struct reclaim_start *s;
	struct reclaim_event *e;
	struct hist *h;
	__u64 now, delta;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&reclaim_starts, &pid_tgid);
	if (!s)
		return;
	if (s->kind != kind)
		goto cleanup;
	now = bpf_ktime_get_ns();
	delta = now - s->ts_ns;
	if ((__s64)delta < 0)
		goto cleanup;
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.kind = kind;
	h = lookup_or_init(&reclaim_hists, &key, &zero_hist);
	if (h)
		hist_add(h, delta);
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || delta < cfg->slow_ns)
		goto cleanup;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
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
	bpf_ringbuf_submit(e, 0);
cleanup:
	bpf_map_delete_elem(&reclaim_starts, &pid_tgid);
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(reclaim_direct_begin, int order)
{
	begin(RECLAIM_DIRECT, order);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(reclaim_direct_end, unsigned long nr_reclaimed)
{
	end(RECLAIM_DIRECT, nr_reclaimed);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(reclaim_memcg_begin, int order)
{
	begin(RECLAIM_MEMCG, order);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(reclaim_memcg_end, unsigned long nr_reclaimed)
{
	end(RECLAIM_MEMCG, nr_reclaimed);
	return 0;
}

/* For kernels without BTF: same arguments, read as raw u64s. */

SEC("raw_tp/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(reclaim_direct_begin_raw, int order)
{
	begin(RECLAIM_DIRECT, order);
	return 0;
}

SEC("raw_tp/mm_vmscan_direct_reclaim_end")
int BPF_PROG(reclaim_direct_end_raw, unsigned long nr_reclaimed)
{
	end(RECLAIM_DIRECT, nr_reclaimed);
	return 0;
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(reclaim_memcg_begin_raw, int order)
{
	begin(RECLAIM_MEMCG, order);
	return 0;
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(reclaim_memcg_end_raw, unsigned long nr_reclaimed)
{
	end(RECLAIM_MEMCG, nr_reclaimed);
	return 0;
}
