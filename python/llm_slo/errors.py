"""Exceptions raised by the toolkit.

Every error the toolkit raises on purpose derives from :class:`LlmSloError`, so a caller
(the CLI above all) can turn it into a one-line message instead of a traceback::

    LlmSloError
    ├── ConfigError           bad configuration or command-line input
    ├── PrivilegeError        bpf() refused: not root, missing CAP_BPF/CAP_SYS_ADMIN, EPERM
    ├── BtfError              no kernel BTF and no usable BTF file
    ├── ProbeError            one probe could not be opened, loaded or attached
    │   └── AttachPointMissing  the kernel or library lacks the hook the probe needs
    └── LabError              the incident lab could not set up or tear down an object

Expected degradation (an optional hook missing, records dropped by a full ring) is
counted and reported, not raised.
"""

from __future__ import annotations


class LlmSloError(Exception):
    """Root of every error the toolkit raises on purpose."""


class ConfigError(LlmSloError):
    """Configuration or command-line input is invalid; the message names the field."""


class PrivilegeError(LlmSloError):
    """The kernel refused a BPF operation for lack of privilege."""


class BtfError(LlmSloError):
    """No BTF is available for CO-RE relocation."""


class ProbeError(LlmSloError):
    """A probe failed to open, load or attach.

    ``probe`` names the probe (its signal) and ``reason`` says why, in words an operator
    can act on.
    """

    def __init__(self, probe: str, reason: str) -> None:
        super().__init__(f"probe {probe}: {reason}")
        self.probe = probe
        self.reason = reason


class AttachPointMissing(ProbeError):
    """The tracepoint, symbol or library a probe attaches to does not exist here."""


class LabError(LlmSloError):
    """A lab primitive could not set up or tear down its kernel object."""
