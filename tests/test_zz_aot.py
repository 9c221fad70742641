"""Compile, for the H100 (sm_90), every kernel specialisation the suite launched under the interpreter.

Named to run last: it compiles what the other tests recorded (tests/conftest.py's RECORDER), so
run it with the test files whose kernels it should check; alone, it has nothing to compile and
says so. Specialisations only the GPU path uses (autotune configs, tensor-core operand types) are
compiled by the kernel's own test file.
"""
from conftest import BACKGROUND, RECORDER

from aot import compile_specs


def test_every_launched_specialisation_compiles_for_sm90():
    assert RECORDER.specs, "no kernel launch was recorded: run the whole suite"
    BACKGROUND.stop()  # what it compiled is cached; its worker would only compete for the cores
    failures = compile_specs(RECORDER.specs.values())
    assert not failures, "\n\n".join(failures)
