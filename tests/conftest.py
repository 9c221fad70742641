"""Test set-up: interpreter on CPU, fresh random seeds, poisoned outputs, launch recording.

- Every test draws a fresh seed (printed, so a failure can be replayed with TRITONNET_SEED=...).
- Every output a launcher allocates is filled with NaN (or the integer max) before its kernel
  runs, so a comparison with torch catches any element left unwritten.
- Every launch's specialisation is recorded; tests/test_zz_aot.py compiles them all for sm_90
  (and when it is among the tests, a background process starts compiling each one as it is first
  launched, on the core the interpreter leaves idle).
- Under the interpreter, every masked load/store/atomic is checked to stay inside the launch's
  tensor arguments (tests/bounds.py): the interpreter itself would not notice.
"""
import os
import random

import pytest

import tritonnet  # noqa: F401  (sets TRITON_INTERPRET before anything imports triton)
from tritonnet import runtime

import bounds
from aot import BackgroundCompiler, SpecRecorder

RECORDER = SpecRecorder()
BACKGROUND = BackgroundCompiler()
runtime.add_observer(RECORDER)
if runtime.INTERPRETED:
    bounds.install()
    runtime.add_observer(bounds.observer)
runtime.set_poison_outputs(True)


@pytest.fixture
def seed():
    """A fresh seed per test; torch, random and numpy are seeded with it."""
    import numpy as np
    import torch

    value = int(os.environ.get("TRITONNET_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={value} (replay with TRITONNET_SEED={value})")
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)
    return value


@pytest.fixture
def device():
    return runtime.device()


@pytest.fixture(autouse=True)
def no_deferred_error_left():
    """Bad input found without waiting for the device (runtime.check_later) belongs to the test
    that made it: one left pending would otherwise surface in whichever test reads a value next."""
    yield
    runtime.raise_deferred(wait=True)


@pytest.hookimpl(trylast=True)  # after --deselect and -k have removed what will not run
def pytest_collection_modifyitems(session, config, items):
    if any(item.path.name == "test_zz_aot.py" for item in items):
        RECORDER.on_new = BACKGROUND.submit
        for spec in RECORDER.specs.values():  # any launched while the test modules were imported
            BACKGROUND.submit(spec)


def pytest_sessionfinish(session, exitstatus):
    BACKGROUND.stop()
    # A run that collected nothing must not look like success.
    if session.testscollected == 0 and exitstatus in (0, 5):
        session.exitstatus = 1
