"""Thin cffi binding to the distro libbpf (1.1 ABI) and a batch ring-buffer reader.

Later pipeline stages never import this package: they see decoded records only.
"""

from llm_slo.bpf.libbpf import BpfObject, Link, Map, Program, libbpf_version
from llm_slo.bpf.ringbuf import RingBuffer

__all__ = ["BpfObject", "Link", "Map", "Program", "RingBuffer", "libbpf_version"]
