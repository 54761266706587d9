"""Building forwards on native runtimes leaves the user's process able to take signals.

The sequence that killed the test suite and would kill a user's process: code that installs a
signal handler (here PyTorch's DataLoader, whose workers leave a SIGCHLD handler), then runtime
calibration (several OpenVINO plugins alive at once, released in the order they were built),
then child processes exiting. Run in a subprocess, so a crash is a failure with a message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from latentspace.process_state import signal_stack
from latentspace.runtime import build_forward, probe_images

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

SEQUENCE = """
    import gc, subprocess, sys, time
    import torch
    from torch.utils.data import DataLoader
    from latentspace.models.load import load
    from latentspace.runtime import build_forward, calibrate, probe_images

    assert list(DataLoader(range(4), num_workers=1)) == [0, 1, 2, 3]  # leaves torch's SIGCHLD handler
    model = load({model_dir!r})
    probe = probe_images(model.preprocess_image, n=4)
    choice = calibrate(
        model.image_module, probe,
        candidates=[("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "fp32")],
    )
    # Two runtimes alive at once whatever the CPU (calibration on a CPU without native bf16 skips
    # the second OpenVINO), released in the order they were built.
    first = build_forward(model.image_module, probe, "openvino", "fp32")
    second = build_forward(model.image_module, probe, "openvino", "fp32")
    del first; gc.collect()
    del second; gc.collect()
    for _ in range(3):  # each child's exit sends this process a SIGCHLD
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        time.sleep(0.05)
    print("survived", choice.name)
"""


@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler"])
def test_signals_after_calibration_do_not_crash_the_process(served_dir, faulthandler):
    """With and without an alternate signal stack of the user's own (pytest's faulthandler
    installs one; a plain interpreter has none)."""
    flags = ["-X", "faulthandler"] if faulthandler else []
    script = textwrap.dedent(SEQUENCE.format(model_dir=str(served_dir)))
    done = subprocess.run([sys.executable, *flags, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "survived" in done.stdout, (
        f"the process died (exit {done.returncode}) after runtime calibration when a child exited\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    )


@pytest.mark.parametrize(("runtime", "precision"), [("openvino", "fp32"), ("onnxruntime", "fp32"), ("torch", "int8")])
def test_building_a_forward_keeps_the_callers_signal_stack(served_dir, runtime, precision):
    from latentspace.models.load import load

    model = load(str(served_dir))
    probe = probe_images(model.preprocess_image, n=2)
    before = signal_stack()
    forward = build_forward(model.image_module, probe, runtime, precision)
    assert forward(probe).shape[0] == 2
    assert signal_stack() == before
    del forward
    assert signal_stack() == before
