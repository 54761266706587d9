"""Process-wide state a library call must leave as it found it, and the tools that put it back.

latentspace runs inside other people's processes (a notebook, a training script, a server), so
what it borrows from the process it returns: signal handlers, the calling thread's alternate
signal stack, the torch thread count. Two of these are changed by libraries we call, not by us:

- **The alternate signal stack.** OpenVINO's CPU plugin (seen in 2026.4) installs a fresh
  alternate signal stack on the thread that creates it and, when the plugin is destroyed,
  restores the stack it replaced *only if its own is still current*, then unmaps its own. Two
  plugins (two `ov.Core`s) destroyed in creation order therefore leave the thread pointing at
  unmapped memory: the first unmaps its stack while the second still holds it as "the one to
  restore", and the second restores it. From then on, any signal whose handler runs on the
  alternate stack (every handler CPython installs: SIGINT's, a DataLoader's SIGCHLD, pytest's
  faulthandler) kills the process with SIGSEGV (si_code SI_KERNEL) at some unrelated later
  moment, e.g. when a child process exits. `kept_signal_stack` puts the caller's stack back.
- **SIGCHLD.** PyTorch's DataLoader installs a SIGCHLD handler the first time it starts worker
  processes and never removes it (it reports a worker that died). `kept_signal_handlers` restores
  the caller's handler once the workers are gone.

`snapshot()` and `differences()` describe all of it; the test suite checks every test with them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

# The signals whose handlers a library call could plausibly change, and a user depends on.
WATCHED_SIGNALS = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)


# -- the calling thread's alternate signal stack (Linux) ------------------------------------------


class _StackT(ctypes.Structure):
    """glibc's `stack_t` on Linux (the field order differs on other systems)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@dataclass(frozen=True)
class SignalStack:
    """One thread's alternate signal stack: where it is, how big, and its flags (SS_DISABLE = 2:
    none; signal handlers then run on the thread's ordinary stack)."""

    address: int
    size: int
    flags: int

    def __str__(self) -> str:
        return "none" if self.flags & 2 else f"{self.size} bytes at {self.address:#x}"


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True)


def signal_stack() -> SignalStack | None:
    """The calling thread's alternate signal stack (None where this cannot be read: not Linux)."""
    libc = _libc()
    if libc is None:
        return None
    current = _StackT()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0:
        return None
    return SignalStack(current.ss_sp or 0, current.ss_size, current.ss_flags)


def set_signal_stack(stack: SignalStack) -> None:
    libc = _libc()
    if libc is None:
        return
    wanted = _StackT(stack.address or None, stack.flags & 2, stack.size)  # SS_ONSTACK is read-only
    if libc.sigaltstack(ctypes.byref(wanted), None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had.

    Wrap every call that may create a native runtime's plugin (OpenVINO's CPU plugin swaps the
    stack in its constructor). A runtime that keeps the stack it installed alive for the life of
    the process (as latentspace's one shared OpenVINO Core does) is harmless if the restore is
    refused; a warning says so."""
    before = signal_stack()
    try:
        yield
    finally:
        after = signal_stack()
        if before is not None and after is not None and after != before:
            try:
                set_signal_stack(before)
            except OSError as e:
                # The kernel refuses a stack too small for the register state in use (e.g. after
                # AMX tiles were enabled); the runtime's own stack then stays, mapped for good.
                log.warning("could not restore this thread's signal stack (%s); keeping %s", e, after)


# -- signal handlers ------------------------------------------------------------------------------


def signal_handlers(signums=WATCHED_SIGNALS) -> dict[int, object]:
    """Each signal's current Python-level handler (None: one installed outside Python)."""
    return {int(s): signal.getsignal(s) for s in signums}


@contextmanager
def kept_signal_handlers(signums=(signal.SIGCHLD,)) -> Iterator[None]:
    """Run the block (e.g. a DataLoader with worker processes, from start to the workers' end),
    then restore the handlers of `signums` that it changed.

    PyTorch's DataLoader installs its SIGCHLD handler once per process and remembers that it did;
    that memory is reset too, so the next loader with workers installs its handler again for its
    own lifetime. Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal_handlers(signums)
    try:
        yield
    finally:
        # (A generator holding this block may be finished by the garbage collector on another thread.)
        if threading.current_thread() is threading.main_thread():
            for signum, handler in before.items():
                if signal.getsignal(signum) is not handler and handler is not None:
                    signal.signal(signum, handler)
            _forget_torch_sigchld_handler()


def _forget_torch_sigchld_handler() -> None:
    """Tell torch its DataLoader SIGCHLD handler is gone (a private flag; absent in other
    versions, where the next loader simply runs without the handler and torch still notices a
    dead worker by polling)."""
    handling = sys.modules.get("torch.utils.data._utils.signal_handling")
    if handling is not None and hasattr(handling, "_SIGCHLD_handler_set"):
        handling._SIGCHLD_handler_set = False


# -- torch's thread count -------------------------------------------------------------------------


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch on `n` threads (None or 0: as it is), then restore the count."""
    import torch

    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# -- everything at once --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessState:
    """The process-wide state latentspace promises to leave as it found it."""

    signal_handlers: dict[int, object]
    environment: dict[str, str]
    signal_stack: SignalStack | None  # the main thread's; None when read elsewhere or unreadable
    torch_threads: int | None  # None: torch is not imported


def snapshot() -> ProcessState:
    torch = sys.modules.get("torch")
    return ProcessState(
        signal_handlers=signal_handlers(),
        environment=dict(os.environ),
        signal_stack=signal_stack() if threading.current_thread() is threading.main_thread() else None,
        torch_threads=torch.get_num_threads() if torch is not None else None,
    )


def restore(before: ProcessState) -> None:
    """Put back what `snapshot()` recorded and has changed since (only that: what is unchanged is
    not touched). Signal handlers and the signal stack are put back only on the main thread,
    where `snapshot()` records them."""
    for key in set(os.environ) - set(before.environment):
        del os.environ[key]
    for key, value in before.environment.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    on_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    for signum, handler in before.signal_handlers.items():
        if on_main_thread and signal.getsignal(signum) is not handler and handler is not None:
            signal.signal(signum, handler)
            if signum == signal.SIGCHLD:
                _forget_torch_sigchld_handler()
    if before.signal_stack is not None and signal_stack() != before.signal_stack:
        set_signal_stack(before.signal_stack)
    torch = sys.modules.get("torch")
    if torch is not None and before.torch_threads is not None and torch.get_num_threads() != before.torch_threads:
        torch.set_num_threads(before.torch_threads)


@contextmanager
def as_found() -> Iterator[None]:
    """Run the block, then put back whatever of `snapshot()`'s state it changed: for calls into
    libraries that change process-wide state as they go and do not undo it (Ray's `init` installs
    a SIGTERM handler, an alternate signal stack and environment variables that outlive its
    `shutdown`; torch.compile leaves an environment variable). Wrap the whole life of what it
    wraps: restoring mid-way would pull state from under it."""
    before = snapshot()
    try:
        yield
    finally:
        restore(before)


@contextmanager
def environment(values: Mapping[str, str], *, defaults_only: bool = False) -> Iterator[None]:
    """Run the block with these environment variables set (`defaults_only`: only those not set
    already, so an explicit setting is respected), then put back what was there before."""
    before = {key: os.environ.get(key) for key in values if not (defaults_only and key in os.environ)}
    os.environ.update({key: values[key] for key in before})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def differences(before: ProcessState, after: ProcessState) -> list[str]:
    """What changed between two snapshots, one readable line per change."""
    changes = []
    for signum, handler in before.signal_handlers.items():
        now = after.signal_handlers[signum]
        if now is not handler:
            changes.append(f"the {signal.Signals(signum).name} handler changed from {handler!r} to {now!r}")
    for key in sorted(set(before.environment) | set(after.environment)):
        was, now = before.environment.get(key), after.environment.get(key)
        if was != now:
            changes.append(f"environment variable {key}: {was!r} -> {now!r}")
    if before.signal_stack != after.signal_stack:
        changes.append(
            f"the main thread's alternate signal stack changed from {before.signal_stack} to {after.signal_stack}"
        )
    if before.torch_threads is not None and before.torch_threads != after.torch_threads:
        changes.append(f"torch's thread count changed from {before.torch_threads} to {after.torch_threads}")
    return changes
