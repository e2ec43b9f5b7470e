"""Fuzzing the manifest and settings readers with random and mutated YAML from a seed corpus.

The corpus (`corpus/manifests/`) holds hostile documents (control characters, alias and merge bombs, absurd
nesting, unbuildable scalars, line breaks editors do not show) and valid manifests. Each input is mutated
(bytes flipped, inserted, deleted, spliced with another seed, lines duplicated) and fed to the manifest
loader and to the settings loader. The promise checked: never an exception other than `ManifestErrors` /
`SettingsError`, every `ManifestError` located (a line and column inside the file), and a bounded time per
input. The budget is small for CI (`max_examples`); CI runs derandomized through the profile in conftest.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired.loader import load_files
from reconciler.desired.manifests import Desired
from reconciler.desired.sources import ManifestFile
from reconciler.errors import ManifestErrors, SettingsError
from reconciler.settings import DeploySettings, load_settings
from tests.fuzz.mutation import mutated

CORPUS = Path(__file__).parent / "corpus" / "manifests"
SEEDS = sorted(path.read_bytes() for path in CORPUS.glob("*.yaml"))
#: Far above what any input here takes (most take milliseconds); a hang or an exponential blow-up breaks it.
SECONDS_PER_INPUT = 5.0

YAML_PIECES = [b"&a ", b"*a", b"<<: ", b"[", b"]", b"{", b"}", b"- ", b": ", b"? ", b"!!int ", b"!!timestamp ",
               b"!!binary ", b"!!set ", b"!!omap ", b"\t", b"\r", b"\xc2\x85", b"\xe2\x80\xa8", b"\x00", b"\x07",
               b"'", b'"', b"#", b"---\n", b"...\n", b"\n", b"  ", b"9" * 50, b"\xff", b"kind: ", b"apiVersion: "]


inputs = mutated(SEEDS, YAML_PIECES) | st.binary(max_size=300) | st.text(max_size=300).map(lambda text: text.encode())


def check_located(errors: ManifestErrors, content: bytes) -> None:
    assert errors.errors, "ManifestErrors without an error"
    lines = content.count(b"\n") + 1
    for error in errors.errors:
        assert 1 <= error.line <= lines + 1, error
        assert error.column >= 1, error
        assert error.message, error


def test_every_corpus_document_is_desired_or_located_errors() -> None:
    assert len(SEEDS) >= 20
    for path in sorted(CORPUS.glob("*.yaml")):
        content = path.read_bytes()
        started = time.monotonic()
        try:
            result = load_files([ManifestFile(path.name, content)])
            assert isinstance(result, Desired)
        except ManifestErrors as errors:
            assert not path.name.startswith("valid-application"), errors
            check_located(errors, content)
        assert time.monotonic() - started < SECONDS_PER_INPUT, path.name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=inputs)
def test_manifests_never_raise_anything_but_located_errors(content: bytes) -> None:
    started = time.monotonic()
    try:
        assert isinstance(load_files([ManifestFile("fuzz.yaml", content)]), Desired)
    except ManifestErrors as errors:
        check_located(errors, content)
    assert time.monotonic() - started < SECONDS_PER_INPUT


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "deploy.yaml"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(content=inputs)
def test_settings_files_never_raise_anything_but_settings_errors(settings_file: Path, content: bytes) -> None:
    settings_file.write_bytes(content)
    started = time.monotonic()
    try:
        assert isinstance(load_settings(settings_file, environ={}), DeploySettings)
    except ManifestErrors as errors:
        check_located(errors, content)
    except SettingsError as error:
        assert str(error)
    assert time.monotonic() - started < SECONDS_PER_INPUT
