"""`make watch-demo`: watch every signal live for ~30 s while real traffic of each kind runs.

Until the incident lab exists this is the newcomer's tour: `sloctl probe watch` runs in
the foreground while this script provokes each signal for real, in cgroups named like
pods ("rag", "noisy") so the CGROUP column tells them apart:

  t=1s   DNS queries to a local server answering after 150 ms, and one SERVFAIL
  t=2s   a refused connect
  t=3s   TLS handshakes the server delays by 200 ms
  t=4s   a connect whose first SYN is dropped by nftables (costs ~1 s)
  t=6s   four CPU hogs in "noisy" delaying the "rag" process's run-queue waits
  t=9s   a transfer losing 30 % of its packets (retransmits)
  t=12s  "rag" filling the page cache past a 32 MiB memory limit (memcg reclaim)
  t=14s  "rag" busy under a 20 % CPU quota (CFS throttling)

Only loopback and a network namespace this script creates are used; everything it
made is removed on exit, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from llm_slo.lab import cleanup_all
from llm_slo.lab.cgroups import V1Cgroup, V2Cgroup, spawn_in
from llm_slo.lab.dns_server import DnsServer
from llm_slo.lab.naming import unique_name
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.nft import NftDrop
from llm_slo.lab.workloads import TlsServer, cpu_hogs, echo_server_argv, wait_ready

DURATION_S = 30
PY = sys.executable

CONNECT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.settimeout(10)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        s.sendall(b"x" * int(sys.argv[3])); got = 0
        while got < int(sys.argv[3]):
            got += len(s.recv(65536))
    except OSError:
        pass
""")
TLS = textwrap.dedent("""
    import socket, ssl, sys
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
        ctx.wrap_socket(raw, server_hostname="localhost").close()
""")
VICTIM = "import time\nend=time.monotonic()+4\nwhile time.monotonic()<end:\n" \
         " b=time.monotonic()+0.002\n while time.monotonic()<b: pass\n time.sleep(0.001)"
FILL = "import os,sys\nf=open(sys.argv[1],'wb')\nfor _ in range(120): f.write(bytes(1<<20))\n" \
       "f.close(); os.unlink(sys.argv[1])"
HOG = "import time\nend=time.monotonic()+5\nwhile time.monotonic()<end: pass"


T0 = time.monotonic()


def say(msg: str) -> None:
    line = f"[demo +{time.monotonic() - T0:4.1f}s] {msg}"
    print(f"\033[1m{line}\033[0m" if sys.stderr.isatty() else line, file=sys.stderr, flush=True)


def traffic(stop: threading.Event, rag: V2Cgroup, noisy: V2Cgroup, tmp: Path) -> None:
    """The scripted workload; each step is real and bounded in time."""
    dns_addr = f"127.53.{random.randint(1, 250)}.{random.randint(2, 250)}"
    def run(argv: list[str], cgroups: list = [rag], timeout: float = 30) -> None:  # noqa: B006
        with contextlib.suppress(subprocess.TimeoutExpired):
            spawn_in(cgroups, argv, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL).wait(timeout)

    def at(t: float) -> bool:
        return not stop.wait(max(0.0, start + t - time.monotonic()))

    start = time.monotonic()
    with DnsServer(dns_addr, 53, delay_s=0.15, answers={"api.provider.lab.": "10.0.0.7"}) as dns, \
            TlsServer("127.0.0.1", handshake_delay_s=0.2) as tls, \
            NetnsPair("llm-slo-demo") as ns:
        srv = ns.run(echo_server_argv(ns.ns_addr, max_s=60), stdout=subprocess.PIPE)
        port = wait_ready(srv)
        if at(1):
            say(f"DNS: 3 queries to {dns_addr} answering after 150 ms, then one SERVFAIL")
            for _ in range(3):
                run(["dig", f"@{dns_addr}", "+tries=1", "api.provider.lab"])
            dns.rcode = 2
            run(["dig", f"@{dns_addr}", "+tries=1", "vectordb.lab"])
        if at(2):
            say("connect: a refused connect to 127.0.0.1:1")
            run([PY, "-c", CONNECT, "127.0.0.1", "1", "0"])
        if at(3):
            say("TLS: 2 handshakes the server delays by 200 ms")
            for _ in range(2):
                run([PY, "-c", TLS, str(tls.port), tls.cafile])
        if at(4):
            say("connect: first SYN dropped by nftables, retried after ~1 s")
            with NftDrop("llm-slo-demo", daddr=ns.ns_addr, dport=port, percent=100,
                         syn_only=True):
                proc = spawn_in([rag], [PY, "-c", CONNECT, ns.ns_addr, str(port), "0"])
                stop.wait(0.4)
            proc.wait(15)
        if at(6):
            say("run queue: 4 CPU hogs in 'noisy' delay the 'rag' process")
            with cpu_hogs(4, [noisy], max_s=10):
                run([PY, "-S", "-c", VICTIM])
        if at(10):
            say("retransmits: 30 % of a 3 MB transfer's packets lost on the wire")
            host_srv = subprocess.Popen(echo_server_argv(ns.host_addr, max_s=30),
                                        stdout=subprocess.PIPE)
            try:
                hport = wait_ready(host_srv)
                with NftDrop("llm-slo-demo", daddr=ns.host_addr, dport=hport, percent=30,
                             direction="input"):
                    run(["ip", "netns", "exec", ns.ns, PY, "-c", CONNECT, ns.host_addr,
                         str(hport), "3000000"])
            finally:
                host_srv.kill()
                host_srv.wait()
        if at(13):
            say("memory: 'rag' writes 120 MiB of page cache under a 32 MiB limit")
            with V1Cgroup("memory", unique_name("llm-slo-demo-mem"),
                          {"memory.limit_in_bytes": str(32 << 20)}) as mem:
                run([PY, "-S", "-c", FILL, str(tmp / "fill")], [rag, mem])
        if at(15):
            say("CPU quota: 'rag' busy under a 20 % quota")
            with V1Cgroup("cpu", unique_name("llm-slo-demo-cpu"),
                          {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "20000"}) as cpu:
                run([PY, "-S", "-c", HOG], [rag, cpu])


def main() -> int:
    if os.geteuid() != 0:
        print("make demo: needs root (BPF, cgroups, network namespaces)", file=sys.stderr)
        return 1
    cleanup_all("llm-slo-demo")
    stop = threading.Event()
    tmp = Path(f"/tmp/{unique_name('llm-slo-demo')}")
    tmp.mkdir()
    watch = None
    try:
        with V2Cgroup(unique_name("llm-slo-demo-rag")) as rag, \
                V2Cgroup(unique_name("llm-slo-demo-noisy")) as noisy:
            watch = subprocess.Popen([PY, "-m", "llm_slo.cli", "probe", "watch",
                                      "--duration", str(DURATION_S)])
            time.sleep(2.0)  # probes loaded before the first provocation
            worker = threading.Thread(target=traffic, args=(stop, rag, noisy, tmp))
            worker.start()
            rc = watch.wait()
            stop.set()
            worker.join()
            return rc
    except KeyboardInterrupt:
        stop.set()
        if watch is not None:
            watch.send_signal(signal.SIGINT)
            watch.wait()
        return 130
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            tmp.rmdir()
        cleanup_all("llm-slo-demo")


if __name__ == "__main__":
    sys.exit(main())
