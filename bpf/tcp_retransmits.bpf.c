// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcp_retransmits_total: retransmitted segments per socket cgroup and flow, aggregated in
 * the kernel; SYN and SYN-ACK retransmits (slow connects/accepts) keyed apart.
 *
 * tp_btf/tcp_retransmit_skb runs from the retransmit timer or softirq, where `current`
 * is whoever was interrupted, so the cgroup comes from the socket (sk_cgrp_data), never
 * from bpf_get_current_*. Since 6.x the tracepoint also fires for failed attempts and
 * carries `err`; only err == 0 is a segment that went out.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct retrans_key);
	__type(value, __u64);
} retransmits SEC(".maps");

static const __u64 zero;

/* Newer kernels added `err` to this tracepoint (6.x); the ctx struct shows which. */
struct trace_event_raw_tcp_retransmit_skb___new {
	int err;
} __attribute__((preserve_access_index));

static __always_inline void on_retransmit(const struct sock *sk, unsigned long long *ctx)
{
	struct retrans_key key = {};
	__u64 *n;
	int state;

	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb___new, err)) {
		/* Third argument only exists on kernels whose tracepoint has err. */
		if ((int)ctx[2] != 0)
			return;
	}
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	key.cgroup_id = sock_cgroup_id(sk);
	flow_from_sock(&key.flow, sk);
	key.syn = state == TCP_SYN_SENT || state == TCP_SYN_RECV;
	n = lookup_or_init(&retransmits, &key, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit, const struct sock *sk)
{
	on_retransmit(sk, ctx);
	return 0;
}

/* For kernels without BTF: same arguments, read as raw u64s. */
SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_raw, const struct sock *sk)
{
	on_retransmit(sk, ctx);
	return 0;
}
