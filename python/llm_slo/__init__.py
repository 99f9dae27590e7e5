"""LLM SLO eBPF toolkit: kernel signals that explain why an LLM service breaks its SLO."""

__version__ = "0.1.0"
