/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Helpers over the llm_slo.h records that touch no map and no kernel struct, shared by
 * the CO-RE programs (common.bpf.h) and the BCC fallback (bcc/common.bcc.h).
 */
#ifndef __RECORD_H
#define __RECORD_H

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 slot = 0;

	/* Branch-free enough and bounded: 6 steps cover 64 bits. */
	if (v >> 32) { v >>= 32; slot += 32; }
	if (v >> 16) { v >>= 16; slot += 16; }
	if (v >> 8) { v >>= 8; slot += 8; }
	if (v >> 4) { v >>= 4; slot += 4; }
	if (v >> 2) { v >>= 2; slot += 2; }
	if (v >> 1) { slot += 1; }
	return slot < HIST_SLOTS ? slot : HIST_SLOTS - 1;
}

/* Histograms are shared by CPUs (plain hash), so updates are atomic adds. */
static __always_inline void hist_add(struct hist *h, __u64 delta_ns)
{
	__u32 slot = log2_slot(delta_ns);

	if (slot >= HIST_SLOTS)
		return;
	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->sum_ns, delta_ns);
}

static __always_inline void fill_header(struct event_header *hdr, __u16 kind, __u32 size,
					__u64 ts_ns, __u64 cgroup_id, __u64 pid_tgid)
{
	hdr->kind = kind;
	hdr->version = ABI_VERSION;
	hdr->size = size;
	hdr->ts_ns = ts_ns;
	hdr->cgroup_id = cgroup_id;
	hdr->pid_tgid = pid_tgid;
}

/*
 * Take one of a cgroup's `limit` streamed records of this second from its window. Not
 * atomic: CPUs racing for the last slot can overshoot by one or two, which a rate limit
 * can afford.
 */
static __always_inline bool rate_take(struct rate_window *w, __u32 limit, __u64 now)
{
	if (now - w->start_ns > 1000000000ULL) {
		w->start_ns = now;
		w->count = 0;
	}
	if (w->count >= limit)
		return false;
	w->count++;
	return true;
}

#endif /* __RECORD_H */
