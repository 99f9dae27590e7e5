// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Benchmark producer, not a signal: one ring-buffer record per getppid() call made by
 * one target process (scripts/bench_producer.c paces those calls at a fixed rate), so
 * scripts/bench_ringbuf.py can measure the agent's real drain + decode path against a
 * real BPF producer.
 *
 * The record is the 72-byte struct runq_event with kind EVENT_RUNQ_SLOW, so the real
 * decoder (decode.runqueue_events) accepts it unchanged. raw_tp/sys_enter needs neither
 * tracefs nor kprobes; it runs for every syscall on the host, so the early exits come
 * first. Failed reserves count in counters[COUNTER_RINGBUF_DROPPED], as in the probes.
 */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

BTF_EXPORT(runq_event);

#if defined(__TARGET_ARCH_arm64)
#define NR_GETPPID 173
#else
#define NR_GETPPID 110 /* x86-64 */
#endif

struct bench_settings {
	__u32 tgid; /* the generator process; 0 = produce nothing */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_settings);
} settings SEC(".maps");

/* Resized from userspace before load (the bench uses 16 MiB). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

SEC("raw_tp/sys_enter")
int BPF_PROG(bench_sys_enter, struct pt_regs *regs, long id)
{
	struct bench_settings *cfg;
	struct runq_event *e;
	__u32 zero = 0;
	__u64 pid_tgid;

	if (id != NR_GETPPID)
		return 0;
	cfg = bpf_map_lookup_elem(&settings, &zero);
	pid_tgid = bpf_get_current_pid_tgid();
	if (!cfg || !cfg->tgid || (__u32)(pid_tgid >> 32) != cfg->tgid)
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_RINGBUF_DROPPED);
		return 0;
	}
	fill_header(&e->hdr, EVENT_RUNQ_SLOW, sizeof(*e), bpf_ktime_get_ns(),
		    bpf_get_current_cgroup_id(), pid_tgid);
	bpf_get_current_comm(&e->hdr.comm, sizeof(e->hdr.comm));
	e->delay_ns = 0;
	e->prev_cgroup_id = 0;
	e->cpu = bpf_get_smp_processor_id();
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
