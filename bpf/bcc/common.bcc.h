/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Shared by the BCC fallback programs (the .bcc.c files here), which BCC compiles at run time
 * against the host's kernel headers on kernels without BTF, where the CO-RE objects
 * cannot relocate.
 *
 * Portability rule: read nothing but tracepoint arguments (BCC builds their struct from
 * the tracefs format of the running kernel), uprobe registers and helpers. No kernel
 * struct is dereferenced, so a header set that does not match the running kernel
 * exactly still yields correct records. Where the CO-RE programs walk a struct (a
 * socket's or a woken task's cgroup), these record the owner when it is `current`.
 *
 * Records, settings and histograms are the layouts of ../llm_slo.h, so userspace reads
 * the maps and rings of both loaders with the same code. The loader pastes this file
 * into each program (BCC rewrites map calls in the main file only).
 */
#ifndef __COMMON_BCC_H
#define __COMMON_BCC_H

#include "llm_slo.h"
#include "record.h"

#define AF_INET 2
#define AF_INET6 10

/* RINGBUF_PAGES comes from the loader: ProbeOptions.ringbuf_bytes as a power of two of
 * pages, the size libbpf gives the CO-RE objects' rings. */

BPF_PERCPU_ARRAY(counters, u64, COUNTER_MAX);

static __always_inline void count(u32 idx)
{
	u64 *v = counters.lookup(&idx);

	if (v)
		(*v)++;
}

/*
 * A v4-mapped or v6 flow from tracepoint address fields (network byte order). Copied
 * with bpf_probe_read_kernel, not memcpy: under register pressure clang keeps a pointer
 * into the tracepoint context, and the verifier refuses loads through a modified ctx.
 */
static __always_inline void flow_from_args(struct flow *f, u16 family, const u8 *saddr,
					   const u8 *daddr, const u8 *saddr_v6,
					   const u8 *daddr_v6, u16 sport, u16 dport)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->family = family;
	f->protocol = 6; /* every caller is a TCP tracepoint */
	f->sport = sport;
	f->dport = dport;
	if (family == AF_INET) {
		f->saddr[10] = 0xff; f->saddr[11] = 0xff;
		f->daddr[10] = 0xff; f->daddr[11] = 0xff;
		bpf_probe_read_kernel(&f->saddr[12], 4, saddr);
		bpf_probe_read_kernel(&f->daddr[12], 4, daddr);
	} else {
		bpf_probe_read_kernel(f->saddr, 16, saddr_v6);
		bpf_probe_read_kernel(f->daddr, 16, daddr_v6);
	}
}

#endif /* __COMMON_BCC_H */
