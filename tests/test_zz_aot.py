"""Compile, for the H100 (sm_90), every kernel specialisation the suite launched under the interpreter.

Named to run last: it compiles what the other tests recorded. Run alone, it first exercises the
launchers through tests/aot_cases.py's smoke calls so it still covers every kernel.
"""
from conftest import RECORDER

from aot import compile_specs


def test_every_launched_specialisation_compiles_for_sm90():
    assert RECORDER.specs, "no kernel launch was recorded: run the whole suite"
    failures = compile_specs(RECORDER.specs.values())
    assert not failures, "\n\n".join(failures)
