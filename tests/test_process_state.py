"""process_state: what a library call borrows from the process, it gives back."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader

from latentspace import process_state
from latentspace.process_state import (
    SignalStack,
    as_found,
    environment,
    kept_signal_handlers,
    kept_signal_stack,
    set_signal_stack,
    signal_stack,
    torch_threads,
)

linux_only = pytest.mark.skipif(signal_stack() is None, reason="the signal stack is read through Linux's sigaltstack")


def _buffer_address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@linux_only
def test_a_swapped_signal_stack_is_put_back():
    """What OpenVINO's CPU plugin does when it starts: a new stack of its own on this thread."""
    mine = signal_stack()
    theirs = mmap.mmap(-1, 64 * 1024)
    try:
        with kept_signal_stack():
            set_signal_stack(SignalStack(_buffer_address(theirs), len(theirs), 0))
            assert signal_stack().address == _buffer_address(theirs)
        assert signal_stack() == mine
    finally:
        set_signal_stack(mine)  # before the buffer goes, whatever happened
        del theirs


@linux_only
def test_an_unchanged_signal_stack_is_left_alone():
    before = signal_stack()
    with kept_signal_stack():
        pass
    assert signal_stack() == before


def test_dataloader_workers_leave_no_sigchld_handler_and_the_next_loader_gets_its_own():
    before = signal.getsignal(signal.SIGCHLD)
    for _ in range(2):
        with kept_signal_handlers():
            loader = iter(DataLoader(range(4), num_workers=1))
            assert next(loader) == 0
            # while its workers run, torch's handler reports one that dies
            assert signal.getsignal(signal.SIGCHLD) is not before
            assert list(loader) == [1, 2, 3]
        assert signal.getsignal(signal.SIGCHLD) is before


def test_environment_sets_for_the_block_and_puts_back(monkeypatch):
    monkeypatch.setenv("LATENTSPACE_TEST_KEPT", "mine")
    monkeypatch.delenv("LATENTSPACE_TEST_NEW", raising=False)
    with environment({"LATENTSPACE_TEST_KEPT": "theirs", "LATENTSPACE_TEST_NEW": "1"}, defaults_only=True):
        assert os.environ["LATENTSPACE_TEST_KEPT"] == "mine"  # an explicit setting is respected
        assert os.environ["LATENTSPACE_TEST_NEW"] == "1"
    assert "LATENTSPACE_TEST_NEW" not in os.environ
    with environment({"LATENTSPACE_TEST_KEPT": "theirs"}):
        assert os.environ["LATENTSPACE_TEST_KEPT"] == "theirs"
    assert os.environ["LATENTSPACE_TEST_KEPT"] == "mine"


def test_torch_threads_for_the_block_only():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_as_found_undoes_what_a_library_left_and_says_what_it_was():
    """as_found puts back handlers, environment and threads; differences names each change."""
    before = process_state.snapshot()
    with as_found():
        signal.signal(signal.SIGTERM, lambda *_: None)
        os.environ["LATENTSPACE_TEST_LEFT_BEHIND"] = "1"
        torch.set_num_threads(1 if before.torch_threads != 1 else 2)
        changes = process_state.differences(before, process_state.snapshot())
    assert any("SIGTERM handler changed" in c for c in changes)
    assert any("LATENTSPACE_TEST_LEFT_BEHIND" in c for c in changes)
    assert any("thread count changed" in c for c in changes)
    assert process_state.differences(before, process_state.snapshot()) == []
