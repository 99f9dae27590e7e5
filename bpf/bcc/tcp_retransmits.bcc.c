// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcp_retransmits_total (BCC fallback): retransmitted segments per socket cgroup and
 * flow, SYN and SYN-ACK retransmits keyed apart, from the tcp_retransmit_skb tracepoint.
 *
 * That tracepoint runs from the retransmit timer or softirq, where `current` is
 * unrelated. The CO-RE program reads the socket's cgroup from the socket; here the
 * owner is recorded when the socket connects (CLOSE -> SYN_SENT runs in connect(), in
 * the owner's context) and forgotten when it closes. Sockets this probe did not see
 * connect (accepted ones, or older than the probe) are charged to cgroup 0.
 */
#include "common.bcc.h"

#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

BPF_TABLE("lru_hash", u64, u64, owners, 65536); /* struct sock * -> cgroup id */
BPF_TABLE("lru_hash", struct retrans_key, u64, retransmits, 16384);

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	u64 key = (u64)args->skaddr, cgroup_id;

	if (args->protocol != 6)
		return 0;
	if (args->oldstate == TCP_CLOSE && args->newstate == TCP_SYN_SENT) {
		cgroup_id = bpf_get_current_cgroup_id();
		if (owners.update(&key, &cgroup_id))
			count(COUNTER_MAP_FULL);
	} else if (args->newstate == TCP_CLOSE) {
		owners.delete(&key);
	}
	return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
	u64 sk = (u64)args->skaddr, *owner, *n, zero = 0;
	struct retrans_key key = {};
	int state = args->state;

#if HAVE_RETRANSMIT_ERR
	if (args->err)
		return 0; /* 6.x also reports attempts that never left */
#endif
	owner = owners.lookup(&sk);
	key.cgroup_id = owner ? *owner : 0;
	flow_from_args(&key.flow, args->family, args->saddr, args->daddr, args->saddr_v6,
		       args->daddr_v6, args->sport, args->dport);
	key.syn = state == TCP_SYN_SENT || state == TCP_SYN_RECV;
	n = retransmits.lookup_or_try_init(&key, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		count(COUNTER_MAP_FULL);
	return 0;
}
