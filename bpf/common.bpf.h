/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Kernel-side helpers shared by the signal programs: counters, histograms, headers. */
#ifndef __COMMON_BPF_H
#define __COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "llm_slo.h"
#include "record.h"

/*
 * Ring-buffer records are only ever used through reserved pointers, so clang would
 * leave them out of the object's BTF; a typed global keeps them in, for bpftool and
 * for the ABI test that checks python/llm_slo/abi.py against the built object.
 */
#define BTF_EXPORT(name) const struct name *__btf_export_##name __attribute__((unused))

#define AF_INET 2
#define AF_INET6 10

/* Per-object health counters (enum counter); per-CPU so the hot path needs no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		(*v)++;
}

/* Look up the value for key, inserting a zeroed one first if needed. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	if (bpf_map_update_elem(map, key, zero, BPF_NOEXIST) && !bpf_map_lookup_elem(map, key)) {
		count(COUNTER_MAP_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(map, key);
}

/*
 * Whether a cgroup may stream one more record: at most `limit` per one-second window
 * (record.h rate_take), counted in `windows` (LRU hash, cgroup id -> struct
 * rate_window). The BCC fallback looks its window up by table name instead.
 */
static __always_inline bool rate_allow(void *windows, __u64 cgroup_id, __u32 limit, __u64 now)
{
	struct rate_window zero = {};
	struct rate_window *w = lookup_or_init(windows, &cgroup_id, &zero);

	return w && rate_take(w, limit, now);
}

/* cgroup v2 id of a task that is not `current` (woken or switched-in task). */
static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

/*
 * cgroup v2 id of the socket's owner, recorded when the socket was created. This is
 * what retransmits and handshake completions must be charged to: they run in softirq
 * or timer context where `current` is whichever task was interrupted.
 */
static __always_inline __u64 sock_cgroup_id(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* Fill a v4-mapped or v6 flow from the socket's common part. */
static __always_inline void flow_from_sock(struct flow *f, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	f->family = family;
	f->protocol = BPF_CORE_READ(sk, sk_protocol);
	/* inet_sport, not skc_num: unhashing on CLOSE zeroes skc_num before the
	 * state-change tracepoint fires, and a failed connect must keep its port. */
	f->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	f->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__u32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		f->saddr[10] = 0xff; f->saddr[11] = 0xff;
		f->daddr[10] = 0xff; f->daddr[11] = 0xff;
		__builtin_memcpy(&f->saddr[12], &s, 4);
		__builtin_memcpy(&f->daddr[12], &d, 4);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&f->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&f->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

#endif /* __COMMON_BPF_H */
