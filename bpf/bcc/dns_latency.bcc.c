// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dns_latency_ms (BCC fallback): libc getaddrinfo, entry to return, per calling task.
 *
 * Only the resolver half of ../dns_latency.bpf.c. Its wire half (cgroup_skb programs
 * that match queries to answers per socket) reads only packets and UAPI contexts and
 * could be ported, but is not yet: compiled against vmlinux.h it carries CO-RE
 * relocations that need kernel BTF, so without BTF it is a reported gap. Uprobes run
 * in the calling task and read only registers and user memory.
 */
#include <uapi/linux/ptrace.h>
#include "common.bcc.h"

struct gai_start {
	u64 ts_ns;
	char host[HOST_LEN];
};

BPF_ARRAY(settings, struct dns_config, 1);
BPF_TABLE("lru_hash", u64, struct gai_start, gai_starts, 16384);
BPF_TABLE("lru_hash", u64, struct hist, resolver_hists, 4096);
BPF_TABLE("lru_hash", u64, struct rate_window, resolver_rates, 4096);
BPF_RINGBUF_OUTPUT(resolver_events, RINGBUF_PAGES);

int resolver_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct gai_start s = { .ts_ns = bpf_ktime_get_ns() };
	const char *node = (const char *)PT_REGS_PARM1(ctx);

	if (node)
		bpf_probe_read_user_str(s.host, sizeof(s.host), node);
	gai_starts.update(&pid_tgid, &s);
	return 0;
}

int resolver_exit(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid(), now, delta, cgroup_id;
	struct gai_start *s = gai_starts.lookup(&pid_tgid);
	struct resolver_event *e;
	struct dns_config *cfg;
	struct hist *h, zero_hist = {};
	struct rate_window *w, zero_window = {};
	int ret = PT_REGS_RC(ctx);
	u32 zero = 0;

	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	delta = now - s->ts_ns;
	if ((s64)delta < 0)
		goto cleanup;
	cgroup_id = bpf_get_current_cgroup_id();
	h = resolver_hists.lookup_or_try_init(&cgroup_id, &zero_hist);
	if (h)
		hist_add(h, delta);
	else
		count(COUNTER_MAP_FULL);
	cfg = settings.lookup(&zero);
	if (cfg && ret == 0 && delta < cfg->slow_ns)
		goto cleanup;
	if (cfg && cfg->max_slow_per_sec && ret == 0) { /* see ../dns_latency.bpf.c */
		w = resolver_rates.lookup_or_try_init(&cgroup_id, &zero_window);
		if (!w || !rate_take(w, cfg->max_slow_per_sec, now)) {
			count(w ? COUNTER_RATE_LIMITED : COUNTER_MAP_FULL);
			goto cleanup;
		}
	}
	e = resolver_events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		goto cleanup;
	}
	fill_header(&e->hdr, EVENT_DNS_RESOLVER, sizeof(*e), now, cgroup_id, pid_tgid);
	bpf_get_current_comm(&e->hdr.comm, sizeof(e->hdr.comm));
	e->latency_ns = delta;
	e->ret = ret;
	e->_pad = 0;
	__builtin_memcpy(e->host, s->host, sizeof(e->host));
	resolver_events.ringbuf_submit(e, 0);
cleanup:
	gai_starts.delete(&pid_tgid);
	return 0;
}
