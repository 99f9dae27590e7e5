// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tls_handshake_ms (BCC fallback): wall time of a whole OpenSSL handshake, first call to
 * last, keyed by the SSL* in its process. Uprobes read only registers and helpers, so
 * this is the CO-RE program's logic unchanged; see ../tls_handshake.bpf.c for why a
 * per-thread depth and the SSL_free failure path.
 */
#include <uapi/linux/ptrace.h>
#include "common.bcc.h"

struct tls_call {
	u64 ssl;
	u32 depth;
	u32 _pad;
};

BPF_ARRAY(settings, struct tls_config, 1);
BPF_TABLE("lru_hash", struct tls_start_key, struct tls_start, tls_starts, 16384);
BPF_TABLE("lru_hash", u64, struct tls_call, tls_calls, 16384);
BPF_TABLE("lru_hash", u64, struct hist, tls_hists, 4096);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline int enter(u64 ssl, u8 role)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_start_key key = { .ssl = ssl, .tgid = pid_tgid >> 32 };
	struct tls_call *c = tls_calls.lookup(&pid_tgid);
	struct tls_call call = { .ssl = ssl, .depth = 1 };
	struct tls_start *s;

	if (c) {
		c->depth++;
		return 0;
	}
	tls_calls.update(&pid_tgid, &call);
	s = tls_starts.lookup(&key);
	if (s) {
		s->calls++;
		if (role && !s->role)
			s->role = role;
	} else {
		struct tls_start init = { .ts_ns = bpf_ktime_get_ns(), .calls = 1, .role = role };

		if (tls_starts.update(&key, &init))
			count(COUNTER_MAP_FULL);
	}
	return 0;
}

static __always_inline void emit(struct tls_start_key *key, struct tls_start *s, int ret,
				 u8 outcome)
{
	u64 now = bpf_ktime_get_ns(), delta = now - s->ts_ns;
	u64 cgroup_id = bpf_get_current_cgroup_id();
	struct tls_config *cfg;
	struct tls_event *e;
	struct hist *h, zero_hist = {};
	u32 zero = 0;

	if ((s64)delta < 0)
		return;
	if (outcome == TLS_OK) {
		h = tls_hists.lookup_or_try_init(&cgroup_id, &zero_hist);
		if (h)
			hist_add(h, delta);
		else
			count(COUNTER_MAP_FULL);
		cfg = settings.lookup(&zero);
		if (cfg && delta < cfg->slow_ns)
			return;
	}
	e = events.ringbuf_reserve(sizeof(*e));
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
	events.ringbuf_submit(e, 0);
}

int tls_do_handshake(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), TLS_ROLE_UNKNOWN);
}

int tls_connect(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), TLS_ROLE_CLIENT);
}

int tls_accept(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), TLS_ROLE_SERVER);
}

int tls_handshake_ret(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *c = tls_calls.lookup(&pid_tgid);
	struct tls_start_key key = { .tgid = pid_tgid >> 32 };
	struct tls_start *s;
	int ret = PT_REGS_RC(ctx);

	if (!c)
		return 0;
	if (--c->depth > 0)
		return 0;
	key.ssl = c->ssl;
	tls_calls.delete(&pid_tgid);
	if (ret != 1)
		return 0;
	s = tls_starts.lookup(&key);
	if (!s)
		return 0;
	emit(&key, s, ret, TLS_OK);
	tls_starts.delete(&key);
	return 0;
}

int tls_free(struct pt_regs *ctx)
{
	struct tls_start_key key = { .ssl = PT_REGS_PARM1(ctx),
				     .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct tls_start *s = tls_starts.lookup(&key);

	if (!s)
		return 0;
	emit(&key, s, 0, TLS_FAILED);
	tls_starts.delete(&key);
	return 0;
}
