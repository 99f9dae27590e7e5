// SPDX-License-Identifier: Apache-2.0
/*
 * Load generator for scripts/bench_ringbuf.py. The bench compiles it with gcc into a
 * temporary directory at run time; no binary is committed.
 *
 *   bench_producer getppid RATE SECONDS    getppid() at RATE calls/s; starts on a line
 *                                          on stdin, so the bench can set the target
 *                                          tgid in the BPF settings map first
 *   bench_producer pingpong SECONDS        two processes bouncing one byte over pipes
 *   bench_producer hog SECONDS             one CPU-bound loop
 *   bench_producer connect RATE SECONDS    loopback TCP connects at RATE/s (connect,
 *                                          accept, close with RST: no TIME_WAIT)
 *   bench_producer udp RATE SECONDS DNS_EVERY DNS_ADDR
 *                                          loopback UDP datagrams at RATE/s to a non-DNS
 *                                          sink; every DNS_EVERY-th one is also a DNS
 *                                          query to DNS_ADDR:53, answered in-process
 *
 * Every mode stops by itself after SECONDS, dies with its parent (PR_SET_PDEATHSIG),
 * and prints one JSON line with what it did and its own CPU time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NSEC 1000000000ULL
#define BATCH 32 /* calls between two clock reads when behind schedule */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_producer: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* No getppid() here: in getppid mode every call of this process is a counted event. */
static void die_with_parent(void)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		die("prctl");
}

/*
 * Fixed-rate pacing in batches: `done` operations are due by start + done/rate. When
 * ahead, sleep until the next one is due; the timer slack (~50 us) makes that a batch
 * of due operations per wakeup, so a low rate leaves the CPU to others. When behind, run
 * up to BATCH operations per clock read. A generator that cannot keep up just falls
 * behind; the achieved rate is reported, never faked.
 */
struct pacer {
	uint64_t start, end;
	double rate;
};

/* How many operations may run now (0 = time is up). */
static uint64_t pace(struct pacer *p, uint64_t done)
{
	for (;;) {
		uint64_t t = now_ns(), due, next;
		struct timespec ts = { 0, 0 };

		if (t >= p->end)
			return 0;
		due = (uint64_t)((double)(t - p->start) * p->rate / NSEC) + 1;
		if (due > done)
			return due - done < BATCH ? due - done : BATCH;
		next = p->start + (uint64_t)((double)done * NSEC / p->rate);
		if (next > t) {
			ts.tv_nsec = (long)(next - t < NSEC / 10 ? next - t : NSEC / 10);
			nanosleep(&ts, NULL);
		}
	}
}

static int mode_getppid(double rate, double secs)
{
	struct pacer p;
	uint64_t calls = 0, n;
	char line[16];
	double c0, elapsed;

	if (!fgets(line, sizeof(line), stdin)) /* wait for "go" */
		return 1;
	c0 = cpu_s();
	p.start = now_ns();
	p.end = p.start + (uint64_t)(secs * NSEC);
	p.rate = rate;
	while ((n = pace(&p, calls))) {
		for (uint64_t i = 0; i < n; i++)
			syscall(SYS_getppid);
		calls += n;
	}
	elapsed = (now_ns() - p.start) / 1e9;
	printf("{\"calls\": %llu, \"elapsed_s\": %.6f, \"cpu_s\": %.6f}\n",
	       (unsigned long long)calls, elapsed, cpu_s() - c0);
	return 0;
}

static volatile sig_atomic_t stop;

static void on_stop(int sig)
{
	(void)sig;
	stop = 1;
}

static int mode_pingpong(double secs)
{
	struct sigaction sa = { .sa_handler = on_stop }; /* no SA_RESTART: read() -> EINTR */
	int ab[2], ba[2];
	uint64_t end, trips = 0;
	pid_t child;
	char b = 'x';
	double c0 = cpu_s();

	if (pipe(ab) || pipe(ba))
		die("pipe");
	child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		die_with_parent();
		while (read(ab[0], &b, 1) == 1)
			if (write(ba[1], &b, 1) != 1)
				break;
		_exit(0);
	}
	/* SIGTERM/SIGINT end the loop, so the child is still reaped below. */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	end = now_ns() + (uint64_t)(secs * NSEC);
	while (!stop && now_ns() < end) {
		if (write(ab[1], &b, 1) != 1 || read(ba[0], &b, 1) != 1)
			break;
		trips++;
	}
	close(ab[1]); /* child reads EOF and exits */
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	printf("{\"round_trips\": %llu, \"cpu_s\": %.6f}\n", (unsigned long long)trips,
	       cpu_s() - c0);
	return 0;
}

static int mode_hog(double secs)
{
	uint64_t end = now_ns() + (uint64_t)(secs * NSEC);
	volatile uint64_t spins = 0;

	while (now_ns() < end)
		for (int i = 0; i < 10000; i++)
			spins++;
	printf("{\"spins\": %llu, \"cpu_s\": %.6f}\n", (unsigned long long)spins, cpu_s());
	return 0;
}

static int mode_connect(double rate, double secs)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct linger rst = { .l_onoff = 1, .l_linger = 0 };
	socklen_t alen = sizeof(addr);
	uint64_t ok = 0, failed = 0, n;
	struct pacer p;
	int lfd;
	double c0 = cpu_s();

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(lfd, 1024) || getsockname(lfd, (struct sockaddr *)&addr, &alen))
		die("listen");
	p.start = now_ns();
	p.end = p.start + (uint64_t)(secs * NSEC);
	p.rate = rate;
	while ((n = pace(&p, ok + failed))) {
		for (uint64_t i = 0; i < n; i++) {
			int c = socket(AF_INET, SOCK_STREAM, 0), s;

			if (c < 0)
				die("socket");
			if (connect(c, (struct sockaddr *)&addr, sizeof(addr))) {
				failed++;
				close(c);
				continue;
			}
			s = accept(lfd, NULL, NULL);
			setsockopt(c, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
			close(c);
			if (s >= 0)
				close(s);
			ok++;
		}
	}
	close(lfd);
	printf("{\"connects\": %llu, \"failed\": %llu, \"elapsed_s\": %.6f, \"cpu_s\": %.6f}\n",
	       (unsigned long long)ok, (unsigned long long)failed, (now_ns() - p.start) / 1e9,
	       cpu_s() - c0);
	return 0;
}

/* A minimal DNS query: header (id, RD, one question) + "bench.example" A IN. */
static size_t dns_query(unsigned char *buf, uint16_t id)
{
	static const unsigned char q[] = "\x05" "bench" "\x07" "example" "\x00"
					 "\x00\x01" "\x00\x01";
	unsigned char hdr[12] = { id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0 };

	memcpy(buf, hdr, sizeof(hdr));
	memcpy(buf + sizeof(hdr), q, sizeof(q) - 1);
	return sizeof(hdr) + sizeof(q) - 1;
}

static int mode_udp(double rate, double secs, unsigned dns_every, const char *dns_ip)
{
	struct sockaddr_in sink = { .sin_family = AF_INET }, dns = { .sin_family = AF_INET };
	socklen_t alen = sizeof(sink);
	unsigned char buf[512], payload[64] = { 0 };
	uint64_t packets = 0, queries = 0, answers = 0, n;
	struct timeval tmo = { 1, 0 };
	struct pacer p;
	int sink_fd, dns_fd, cli;
	double c0 = cpu_s();

	sink.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (inet_pton(AF_INET, dns_ip, &dns.sin_addr) != 1) {
		fprintf(stderr, "bench_producer: bad address %s\n", dns_ip);
		return 1;
	}
	dns.sin_port = htons(53);
	sink_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	dns_fd = socket(AF_INET, SOCK_DGRAM, 0);
	cli = socket(AF_INET, SOCK_DGRAM, 0);
	if (sink_fd < 0 || dns_fd < 0 || cli < 0)
		die("socket");
	if (bind(sink_fd, (struct sockaddr *)&sink, sizeof(sink)) ||
	    getsockname(sink_fd, (struct sockaddr *)&sink, &alen))
		die("bind sink");
	if (bind(dns_fd, (struct sockaddr *)&dns, sizeof(dns)))
		die("bind dns");
	setsockopt(dns_fd, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo));
	setsockopt(cli, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof(tmo));
	p.start = now_ns();
	p.end = p.start + (uint64_t)(secs * NSEC);
	p.rate = rate;
	while ((n = pace(&p, packets))) {
		for (uint64_t i = 0; i < n; i++) {
			/* Unconnected sendto, so cgroup/sendmsg4 runs too, as for real DNS. */
			if (sendto(cli, payload, sizeof(payload), 0, (struct sockaddr *)&sink,
				   sizeof(sink)) < 0)
				die("sendto sink");
			while (recv(sink_fd, buf, sizeof(buf), 0) > 0)
				;
			packets++;
			if (dns_every && packets % dns_every == 0) {
				struct sockaddr_in from;
				socklen_t flen = sizeof(from);
				size_t len = dns_query(buf, (uint16_t)queries);
				ssize_t got;

				if (sendto(cli, buf, len, 0, (struct sockaddr *)&dns, sizeof(dns)) < 0)
					die("sendto dns");
				queries++;
				got = recvfrom(dns_fd, buf, sizeof(buf), 0, (struct sockaddr *)&from,
					       &flen);
				if (got < 12)
					continue;
				buf[2] |= 0x80; /* QR: response, rcode 0, no answers */
				sendto(dns_fd, buf, got, 0, (struct sockaddr *)&from, flen);
				if (recv(cli, buf, sizeof(buf), 0) >= 12)
					answers++;
			}
		}
	}
	printf("{\"packets\": %llu, \"dns_queries\": %llu, \"dns_answers\": %llu, "
	       "\"elapsed_s\": %.6f, \"cpu_s\": %.6f}\n",
	       (unsigned long long)packets, (unsigned long long)queries,
	       (unsigned long long)answers, (now_ns() - p.start) / 1e9, cpu_s() - c0);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";

	die_with_parent();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "getppid") && argc == 4)
		return mode_getppid(atof(argv[2]), atof(argv[3]));
	if (!strcmp(mode, "pingpong") && argc == 3)
		return mode_pingpong(atof(argv[2]));
	if (!strcmp(mode, "hog") && argc == 3)
		return mode_hog(atof(argv[2]));
	if (!strcmp(mode, "connect") && argc == 4)
		return mode_connect(atof(argv[2]), atof(argv[3]));
	if (!strcmp(mode, "udp") && argc == 6)
		return mode_udp(atof(argv[2]), atof(argv[3]), (unsigned)atoi(argv[4]), argv[5]);
	fprintf(stderr, "usage: %s getppid RATE SECS | pingpong SECS | hog SECS | "
			"connect RATE SECS | udp RATE SECS DNS_EVERY DNS_ADDR\n", argv[0]);
	return 2;
}
