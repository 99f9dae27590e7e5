// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * connect_latency_ms: active TCP connects, from SYN to the end of SYN_SENT, with outcome.
 *
 * Kprobe-free: tp_btf/inet_sock_set_state fires on every TCP state change. CLOSE ->
 * SYN_SENT runs inside connect() in the calling task, so pid, comm and cgroup are taken
 * there. The exit from SYN_SENT runs in softirq (SYN-ACK, RST) or the retransmit timer,
 * where `current` is unrelated; it only reads what the start recorded, plus sk_err,
 * which tcp_reset()/tcp_write_err() set before tcp_done() moves the socket to CLOSE.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(connect_event);

#define IPPROTO_TCP 6
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define ECONNRESET 104

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct connect_config);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct sock * */
	__type(value, struct connect_start);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* cgroup id */
	__type(value, struct connect_stats);
} connect_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static const struct connect_stats zero_stats;

static __always_inline __u8 outcome_of(int newstate, int err)
{
	if (newstate == TCP_ESTABLISHED)
		return CONNECT_ESTABLISHED;
	switch (err) {
	case 0:
		return CONNECT_ABORTED;
	case ECONNREFUSED:
		return CONNECT_REFUSED;
	case ETIMEDOUT:
		return CONNECT_TIMEOUT;
	case ECONNRESET:
		return CONNECT_RESET;
	default:
		return CONNECT_ERROR;
	}
}

static __always_inline void on_start(const struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct connect_start s = {};

	s.ts_ns = bpf_ktime_get_ns();
	s.cgroup_id = bpf_get_current_cgroup_id();
	s.pid_tgid = bpf_get_current_pid_tgid();
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
	s.retrans_at_start = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
	if (bpf_map_update_elem(&starts, &key, &s, BPF_ANY))
		count(COUNTER_MAP_FULL);
}

static __always_inline void on_end(const struct sock *sk, int newstate)
{
	__u64 key = (__u64)sk, now = bpf_ktime_get_ns(), delta;
	struct connect_start *s = bpf_map_lookup_elem(&starts, &key);
	struct connect_config *cfg;
	struct connect_stats *st;
	struct connect_event *e;
	__u32 zero = 0;
	__u8 outcome;
	int err;

	if (!s)
		return;
	delta = now - s->ts_ns;
	if ((__s64)delta < 0)
		goto cleanup;
	err = newstate == TCP_ESTABLISHED ? 0 : BPF_CORE_READ(sk, sk_err);
	outcome = outcome_of(newstate, err);
	st = lookup_or_init(&connect_stats, &s->cgroup_id, &zero_stats);
	if (st) {
		if (outcome == CONNECT_ESTABLISHED)
			hist_add(&st->hist, delta);
		__sync_fetch_and_add(&st->outcomes[outcome & 7], 1);
	}
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (outcome == CONNECT_ESTABLISHED && (!cfg || delta < cfg->slow_ns))
		goto cleanup;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		goto cleanup;
	}
	fill_header(&e->hdr, EVENT_CONNECT, sizeof(*e), now, s->cgroup_id, s->pid_tgid);
	__builtin_memcpy(e->hdr.comm, s->comm, sizeof(e->hdr.comm));
	__builtin_memset(&e->flow, 0, sizeof(e->flow));
	flow_from_sock(&e->flow, sk);
	e->latency_ns = delta;
	e->err = err;
	e->outcome = outcome;
	e->syn_retrans = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans) - s->retrans_at_start;
	e->_pad[0] = e->_pad[1] = e->_pad[2] = 0;
	e->_pad2 = 0;
	bpf_ringbuf_submit(e, 0);
cleanup:
	bpf_map_delete_elem(&starts, &key);
}

static __always_inline void on_state(const struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return;
	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT)
		on_start(sk);
	else if (oldstate == TCP_SYN_SENT)
		on_end(sk, newstate);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(connect_state, const struct sock *sk, const int oldstate, const int newstate)
{
	on_state(sk, oldstate, newstate);
	return 0;
}

/* For kernels without BTF: same arguments, read as raw u64s. */
SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(connect_state_raw, const struct sock *sk, const int oldstate, const int newstate)
{
	on_state(sk, oldstate, newstate);
	return 0;
}
