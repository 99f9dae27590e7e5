// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tls_handshake_ms: wall time of a whole OpenSSL handshake, first call to last, keyed by
 * the SSL* in its process.
 *
 * Uprobes on libssl's SSL_do_handshake, SSL_connect and SSL_accept (SSL_connect and
 * SSL_accept call SSL_do_handshake, so a per-thread depth keeps nested entries to one
 * call). A non-blocking handshake returns <= 0 (WANT_READ/WRITE) and is called again:
 * the start is kept until a call returns 1 (done) or SSL_free arrives first (failed).
 * Uprobes run in the calling task, so pid and cgroup are the application's.
 * Written with BPF_KPROBE/BPF_KRETPROBE: libbpf 1.1 lacks BPF_UPROBE, same pt_regs ABI.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(tls_event);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_config);
} settings SEC(".maps");

struct tls_call {
	__u64 ssl;
	__u32 depth;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tls_start_key);
	__type(value, struct tls_start);
} tls_starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* cgroup id */
	__type(value, struct hist);
} tls_hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static const struct hist zero_hist;

static __always_inline int enter(void *ssl, __u8 role)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_start_key key = { .ssl = (__u64)ssl, .tgid = pid_tgid >> 32 };
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	struct tls_call call = { .ssl = (__u64)ssl, .depth = 1 };
	struct tls_start *s;

	if (c) {
		c->depth++; /* SSL_do_handshake inside SSL_connect/SSL_accept: same call */
		return 0;
	}
	bpf_map_update_elem(&tls_calls, &pid_tgid, &call, BPF_ANY);
	s = bpf_map_lookup_elem(&tls_starts, &key);
	if (s) {
		s->calls++; /* a non-blocking retry of a pending handshake */
		if (role && !s->role)
			s->role = role;
	} else {
		struct tls_start init = { .ts_ns = bpf_ktime_get_ns(), .calls = 1, .role = role };

		if (bpf_map_update_elem(&tls_starts, &key, &init, BPF_ANY))
			count(COUNTER_MAP_FULL);
	}
	return 0;
}

static __always_inline void emit(struct tls_start_key *key, struct tls_start *s, int ret,
				 __u8 outcome)
{
	__u64 now = bpf_ktime_get_ns(), delta = now - s->ts_ns;
	__u64 cgroup_id = bpf_get_current_cgroup_id();
	struct tls_config *cfg;
	struct tls_event *e;
	struct hist *h;
	__u32 zero = 0;

	if ((__s64)delta < 0)
		return;
	if (outcome == TLS_OK) {
		h = lookup_or_init(&tls_hists, &cgroup_id, &zero_hist);
		if (h)
			hist_add(h, delta);
		/* A client that opens a connection per request does a handshake per request:
		 * the histogram is enough for the fast ones. */
		cfg = bpf_map_lookup_elem(&settings, &zero);
		if (cfg && delta < cfg->slow_ns)
			return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		return;
	}
	fill_header(&e->hdr, EVENT_TLS_HANDSHAKE, sizeof(*e), now, cgroup_id,
		    bpf_get_current_pid_tgid());
	bpf_get_current_comm(&e->hdr.comm, sizeof(e->hdr.comm));
	e->ssl = key->ssl;
	e->latency_ns = delta;
	e->calls = s->calls;
	e->ret = ret;
	e->outcome = outcome;
	e->role = s->role;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int leave(int ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *c = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	struct tls_start_key key = { .tgid = pid_tgid >> 32 };
	struct tls_start *s;

	if (!c)
		return 0;
	if (--c->depth > 0)
		return 0; /* SSL_do_handshake returning inside SSL_connect/SSL_accept */
	key.ssl = c->ssl;
	bpf_map_delete_elem(&tls_calls, &pid_tgid);
	if (ret != 1)
		return 0; /* WANT_READ/WRITE or error: SSL_free or a later call decides */
	s = bpf_map_lookup_elem(&tls_starts, &key);
	if (!s)
		return 0;
	emit(&key, s, ret, TLS_OK);
	bpf_map_delete_elem(&tls_starts, &key);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(tls_do_handshake, void *ssl)
{
	return enter(ssl, TLS_ROLE_UNKNOWN);
}

SEC("uprobe")
int BPF_KPROBE(tls_connect, void *ssl)
{
	return enter(ssl, TLS_ROLE_CLIENT);
}

SEC("uprobe")
int BPF_KPROBE(tls_accept, void *ssl)
{
	return enter(ssl, TLS_ROLE_SERVER);
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_handshake_ret, int ret)
{
	return leave(ret);
}

/* A handshake still pending when its SSL is freed has failed (or was abandoned). */
SEC("uprobe")
int BPF_KPROBE(tls_free, void *ssl)
{
	struct tls_start_key key = { .ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct tls_start *s = bpf_map_lookup_elem(&tls_starts, &key);

	if (!s)
		return 0;
	emit(&key, s, 0, TLS_FAILED);
	bpf_map_delete_elem(&tls_starts, &key);
	return 0;
}
