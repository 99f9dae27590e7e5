// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * connect_latency_ms (BCC fallback): active TCP connects from SYN to the end of
 * SYN_SENT, with outcome, from classic tracepoints only.
 *
 * CLOSE -> SYN_SENT runs inside connect() in the calling task (pid, comm, cgroup are
 * taken there); the exit from SYN_SENT runs in softirq or a timer. The CO-RE program
 * reads sk_err at the exit; here the error comes from tracepoints, which the kernel
 * fires around tcp_done() in an order that changed over time:
 *  - tcp_receive_reset fires before it (a refused connect);
 *  - inet_sk_error_report (5.15+; no socket address, so keyed by the whole flow) fires
 *    before it for timeouts and ICMP errors up to 6.9, after it from 6.10
 *    (tcp_done_with_error). A report taken at CLOSE must be that recent: reports of
 *    established sockets and ones that follow a reset are never claimed and just age.
 * A failure whose error is not known at CLOSE is parked in `unreported` and streamed by
 * the error report that follows; one that no report follows was closed by the
 * application, and userspace streams it as aborted once it is a second old. Without the
 * error report (before 5.15) a failure that no reset explains is CONNECT_ERROR, err 0.
 */
#include "common.bcc.h"

#define PROTO_TCP 6
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define ECONNRESET 104
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
/* A report this close before the CLOSE is about that socket (same softirq, up to 6.9). */
#define REPORT_SLACK_NS 10000000ULL

struct pending {
	u64 ts_ns;
	u64 cgroup_id;
	u64 pid_tgid;
	char comm[TASK_COMM_LEN];
	u32 syn_retrans;
	s32 err; /* from tcp_receive_reset, 0 if none */
};

struct flow_error {
	u64 ts_ns;
	s32 err;
	u32 _pad;
};

BPF_ARRAY(settings, struct connect_config, 1);
BPF_TABLE("lru_hash", u64, struct pending, starts, 16384);
BPF_TABLE("lru_hash", struct flow, struct flow_error, flow_errors, 4096);
BPF_TABLE("lru_hash", struct flow, struct connect_event, unreported, 4096);
BPF_TABLE("lru_hash", u64, struct connect_stats, connect_stats, 4096);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Never written: the zeroed initial value of connect_stats, too large for the stack. */
BPF_ARRAY(zero_stats, struct connect_stats, 1);

static __always_inline u8 outcome_of(int newstate, int err)
{
	if (newstate == TCP_ESTABLISHED)
		return CONNECT_ESTABLISHED;
	switch (err) {
	case 0:
		return HAVE_SK_ERROR_REPORT ? CONNECT_ABORTED : CONNECT_ERROR;
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

static __always_inline void fill_event(struct connect_event *e, const struct pending *s,
				       const struct flow *fl, u64 now, u64 delta, int err,
				       u8 outcome)
{
	fill_header(&e->hdr, EVENT_CONNECT, sizeof(*e), now, s->cgroup_id, s->pid_tgid);
	__builtin_memcpy(e->hdr.comm, s->comm, sizeof(e->hdr.comm));
	__builtin_memcpy(&e->flow, fl, sizeof(e->flow));
	e->latency_ns = delta;
	e->err = err;
	e->outcome = outcome;
	e->syn_retrans = s->syn_retrans;
	e->_pad[0] = e->_pad[1] = e->_pad[2] = 0;
	e->_pad2 = 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	u64 key = (u64)args->skaddr, now = bpf_ktime_get_ns(), delta;
	struct connect_stats *st, *zs;
	struct connect_config *cfg;
	struct connect_event *e;
	struct flow_error *ferr;
	struct flow fl;
	struct pending *s;
	u32 zero = 0;
	int err = 0;
	u8 outcome;

	if (args->protocol != PROTO_TCP)
		return 0;
	if (args->oldstate == TCP_CLOSE && args->newstate == TCP_SYN_SENT) {
		struct pending p = { .ts_ns = now, .cgroup_id = bpf_get_current_cgroup_id(),
				     .pid_tgid = bpf_get_current_pid_tgid() };

		bpf_get_current_comm(&p.comm, sizeof(p.comm));
		if (starts.update(&key, &p))
			count(COUNTER_MAP_FULL);
		return 0;
	}
	if (args->oldstate != TCP_SYN_SENT)
		return 0;
	s = starts.lookup(&key);
	if (!s)
		return 0;
	delta = now - s->ts_ns;
	if ((s64)delta < 0)
		goto cleanup;
	flow_from_args(&fl, args->family, args->saddr, args->daddr, args->saddr_v6,
		       args->daddr_v6, args->sport, args->dport);
	ferr = flow_errors.lookup(&fl);
	if (ferr) {
		if (args->newstate != TCP_ESTABLISHED && now - ferr->ts_ns <= REPORT_SLACK_NS)
			err = ferr->err;
		flow_errors.delete(&fl);
	}
	if (s->err)
		err = s->err;
	outcome = outcome_of(args->newstate, err);
	zs = zero_stats.lookup(&zero);
	st = zs ? connect_stats.lookup_or_try_init(&s->cgroup_id, zs) : NULL;
	if (!st) {
		count(COUNTER_MAP_FULL);
	} else {
		if (outcome == CONNECT_ESTABLISHED)
			hist_add(&st->hist, delta);
		/* A parked failure counts as aborted until its report says otherwise. */
		__sync_fetch_and_add(&st->outcomes[outcome & 7], 1);
	}
	cfg = settings.lookup(&zero);
	/* slow_ns 0: settings not written yet (BCC attaches tracepoints at load). */
	if (outcome == CONNECT_ESTABLISHED && (!cfg || !cfg->slow_ns || delta < cfg->slow_ns))
		goto cleanup;
	if (outcome == CONNECT_ABORTED) {
		struct connect_event parked = {};

		fill_event(&parked, s, &fl, now, delta, err, outcome);
		if (unreported.update(&fl, &parked))
			count(COUNTER_MAP_FULL);
		goto cleanup;
	}
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		goto cleanup;
	}
	fill_event(e, s, &fl, now, delta, err, outcome);
	events.ringbuf_submit(e, 0);
cleanup:
	starts.delete(&key);
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	u64 key = (u64)args->skaddr;
	struct pending *s;

	if (args->state != TCP_SYN_SENT)
		return 0;
#if HAVE_RETRANSMIT_ERR
	if (args->err)
		return 0; /* 6.x also reports attempts that never left */
#endif
	s = starts.lookup(&key);
	if (s)
		__sync_fetch_and_add(&s->syn_retrans, 1);
	return 0;
}

#if HAVE_RECEIVE_RESET
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
	u64 key = (u64)args->skaddr;
	struct pending *s = starts.lookup(&key);

	if (s)
		s->err = ECONNREFUSED; /* a reset in SYN_SENT is a refusal (tcp_reset()) */
	return 0;
}
#endif

#if HAVE_SK_ERROR_REPORT
TRACEPOINT_PROBE(sock, inet_sk_error_report)
{
	struct flow_error fe = { .ts_ns = bpf_ktime_get_ns(), .err = args->error };
	struct connect_event *parked, *e;
	struct connect_stats *st;
	struct flow fl;
	u8 outcome;

	if (args->protocol != PROTO_TCP || !fe.err)
		return 0;
	flow_from_args(&fl, args->family, args->saddr, args->daddr, args->saddr_v6,
		       args->daddr_v6, args->sport, args->dport);
	parked = unreported.lookup(&fl);
	if (!parked) {
		flow_errors.update(&fl, &fe); /* up to 6.9: tcp_done() comes next */
		return 0;
	}
	outcome = outcome_of(TCP_CLOSE, fe.err);
	st = connect_stats.lookup(&parked->hdr.cgroup_id);
	if (st) {
		__sync_fetch_and_add(&st->outcomes[CONNECT_ABORTED], -1);
		__sync_fetch_and_add(&st->outcomes[outcome & 7], 1);
	}
	e = events.ringbuf_reserve(sizeof(*e));
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
	} else {
		__builtin_memcpy(e, parked, sizeof(*e));
		e->err = fe.err;
		e->outcome = outcome;
		events.ringbuf_submit(e, 0);
	}
	unreported.delete(&fl);
	return 0;
}
#endif
