/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Record layouts shared by every BPF program and mirrored, field by field, by
 * python/llm_slo/abi.py (a test checks both against the BTF of the built objects).
 *
 * Rules: fixed-width types only, explicit padding, a size assert per record.
 * Every streamed record starts with struct event_header.
 */
#ifndef __LLM_SLO_H
#define __LLM_SLO_H

#define ABI_VERSION 1
#define TASK_COMM_LEN 16
#define HIST_SLOTS 40 /* log2(ns): slot 39 holds everything >= ~9 minutes */
#define DNS_QUESTION_LEN 128 /* raw bytes after the DNS header: the question first */
#define HOST_LEN 64

enum event_kind {
	EVENT_DNS_RESPONSE = 1,
	EVENT_DNS_RESOLVER = 2,
	EVENT_RUNQ_SLOW = 3,
	EVENT_CONNECT = 4,
	EVENT_TLS_HANDSHAKE = 5,
	EVENT_RECLAIM = 6,
};

/* Indices of each object's per-CPU `counters` array. */
enum counter {
	COUNTER_RINGBUF_DROPPED = 0, /* bpf_ringbuf_reserve failed: record lost */
	COUNTER_RATE_LIMITED = 1,    /* slow event suppressed by the per-cgroup limit */
	COUNTER_MAP_FULL = 2,        /* a start/aggregate map update failed */
	COUNTER_MAX = 4,
};

struct event_header {
	__u16 kind;
	__u16 version;
	__u32 size;
	__u64 ts_ns;	 /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id; /* cgroup v2 id of the task/socket the event belongs to */
	__u64 pid_tgid;	 /* tgid << 32 | tid; 0 when unknown */
	char comm[TASK_COMM_LEN];
};
_Static_assert(sizeof(struct event_header) == 48, "event_header size");

/* A flow as IPv6 addresses; IPv4 is stored v4-mapped (::ffff:a.b.c.d). */
struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host byte order */
	__u16 dport;
	__u16 family; /* AF_INET or AF_INET6 (of the socket, or of the packet for DNS) */
	__u8 protocol;
	__u8 _pad;
};
_Static_assert(sizeof(struct flow) == 40, "flow size");

/* Per-cgroup latency histogram, read each interval and differenced in userspace. */
struct hist {
	__u64 slots[HIST_SLOTS];
	__u64 count;
	__u64 sum_ns;
};
_Static_assert(sizeof(struct hist) == 336, "hist size");

/* ---- dns_latency ---- */

struct dns_config {
	__u64 slow_ns;	    /* stream answered queries at or above this latency */
	__u32 sample_every; /* also stream 1 in N answered queries; 0 = off */
	/* per cgroup and layer (wire, resolver): answers and calls streamed for being slow
	 * or sampled; failures, truncations and timeouts always are. 0 = no limit */
	__u32 max_slow_per_sec;
};

struct dns_event {
	struct event_header hdr;
	struct flow flow; /* client side: saddr/sport = the querying socket */
	__u64 latency_ns;
	__u16 dns_id;
	__u8 rcode;
	__u8 flags; /* DNS_FLAG_* */
	__u16 question_len;
	__u16 _pad;
	__u8 question[DNS_QUESTION_LEN];
};
_Static_assert(sizeof(struct dns_event) == 232, "dns_event size");

#define DNS_FLAG_TCP 0x1
#define DNS_FLAG_TRUNCATED 0x2

/* Value of the in-flight query map; userspace ages old entries into timeouts. */
struct dns_query {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 pid_tgid;
	char comm[TASK_COMM_LEN];
	struct flow flow;
	__u16 question_len;
	__u8 flags;
	__u8 _pad[5];
	__u8 question[DNS_QUESTION_LEN];
};
_Static_assert(sizeof(struct dns_query) == 216, "dns_query size");

struct dns_query_key {
	__u64 sock_cookie;
	__u16 dns_id;
	__u8 _pad[6];
};

/* Who owns a DNS socket, stored from process context (cgroup/connect, sendmsg). */
struct sock_owner {
	__u64 pid_tgid;
	char comm[TASK_COMM_LEN];
};

struct resolver_event {
	struct event_header hdr;
	__u64 latency_ns;
	__s32 ret; /* getaddrinfo return: 0 or EAI_* (negative) */
	__u32 _pad;
	char host[HOST_LEN];
};
_Static_assert(sizeof(struct resolver_event) == 128, "resolver_event size");

/* ---- tcp_retransmits ---- */

/* Aggregated per socket cgroup and flow; SYN retransmits have their own keys. */
struct retrans_key {
	__u64 cgroup_id;
	struct flow flow;
	__u8 syn; /* 1: retransmit of a SYN (SYN_SENT) or SYN-ACK (SYN_RECV) */
	__u8 _pad[7];
};
_Static_assert(sizeof(struct retrans_key) == 56, "retrans_key size");

/* ---- runqueue_delay ---- */

struct runq_config {
	__u64 slow_ns;		 /* stream a wait at or above this */
	__u32 max_events_per_sec; /* per cgroup; 0 = no slow events */
	__u32 _pad;
};

struct runq_event {
	struct event_header hdr; /* the task that waited */
	__u64 delay_ns;
	__u64 prev_cgroup_id; /* cgroup of the task that held the CPU until then */
	__u32 cpu;
	__u32 _pad;
};
_Static_assert(sizeof(struct runq_event) == 72, "runq_event size");

/* One cgroup's count of streamed records in the current second (record.h rate_take). */
struct rate_window {
	__u64 start_ns;
	__u64 count;
};

/* ---- connect_latency ---- */

enum connect_outcome {
	CONNECT_ESTABLISHED = 0,
	CONNECT_REFUSED = 1,
	CONNECT_TIMEOUT = 2,
	CONNECT_RESET = 3,
	CONNECT_ERROR = 4,   /* another errno, e.g. EHOSTUNREACH */
	CONNECT_ABORTED = 5, /* closed by the application before it completed */
};

struct tls_config {
	__u64 slow_ns; /* stream completed handshakes at or above this; failures always */
};

struct connect_config {
	__u64 slow_ns; /* stream established connects at or above this; failures always */
};

struct connect_start {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 pid_tgid;
	char comm[TASK_COMM_LEN];
	__u32 retrans_at_start;
	__u32 _pad;
};

struct connect_event {
	struct event_header hdr;
	struct flow flow;
	__u64 latency_ns;
	__s32 err; /* sk_err at the end of SYN_SENT (positive errno), 0 if established */
	__u8 outcome;
	__u8 _pad[3];
	__u32 syn_retrans;
	__u32 _pad2;
};
_Static_assert(sizeof(struct connect_event) == 112, "connect_event size");

/* Aggregate per cgroup: histogram of established connects plus failure counts. */
struct connect_stats {
	struct hist hist;
	__u64 outcomes[8]; /* indexed by enum connect_outcome */
};

/* ---- tls_handshake ---- */

enum tls_outcome {
	TLS_OK = 0,
	TLS_FAILED = 1, /* SSL_free before the handshake completed */
};

enum tls_role {
	TLS_ROLE_UNKNOWN = 0, /* SSL_do_handshake called directly */
	TLS_ROLE_CLIENT = 1,
	TLS_ROLE_SERVER = 2,
};

struct tls_start_key {
	__u64 ssl; /* SSL* in the owning process */
	__u32 tgid;
	__u32 _pad;
};

struct tls_start {
	__u64 ts_ns;
	__u32 calls; /* outermost handshake calls: 1 + non-blocking retries */
	__u8 role;
	__u8 _pad[3];
};

struct tls_event {
	struct event_header hdr;
	__u64 ssl;
	__u64 latency_ns;
	__u32 calls;
	__s32 ret;
	__u8 outcome;
	__u8 role;
	__u8 _pad[6];
};
_Static_assert(sizeof(struct tls_event) == 80, "tls_event size");

/* ---- mem_reclaim_latency ---- */

enum reclaim_kind {
	RECLAIM_DIRECT = 0, /* global direct reclaim in the allocating task */
	RECLAIM_MEMCG = 1,  /* reclaim because the task's memory cgroup hit its limit */
};

struct reclaim_config {
	__u64 slow_ns;
};

struct reclaim_key {
	__u64 cgroup_id;
	__u32 kind;
	__u32 _pad;
};

struct reclaim_event {
	struct event_header hdr;
	__u64 latency_ns;
	__u64 nr_reclaimed;
	__u32 kind;
	__s32 order;
};
_Static_assert(sizeof(struct reclaim_event) == 72, "reclaim_event size");

#endif /* __LLM_SLO_H */
