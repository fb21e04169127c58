"""The probe module agentd assembles is valid WebAssembly that a real runtime runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.health.probe import PROBE_OUTPUT, probe_module


def test_the_probe_is_a_wasm_module_of_a_stable_shape() -> None:
    module = probe_module()
    assert module[:8] == b"\x00asm\x01\x00\x00\x00"
    assert module == probe_module()  # the same bytes every time
    assert b"wasi_snapshot_preview1" in module
    assert PROBE_OUTPUT in module
    assert len(module) < 256


def test_a_real_webassembly_runtime_runs_it_and_prints_the_line(tmp_path: Path) -> None:
    """wasmtime (PyPI) stands in for WasmEdge here: both run WASI command modules the same way."""
    wasmtime = pytest.importorskip("wasmtime")
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, probe_module())
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    config = wasmtime.WasiConfig()
    out = tmp_path / "stdout"
    config.stdout_file = str(out)
    store.set_wasi(config)
    instance = linker.instantiate(store, module)
    instance.exports(store)["_start"](store)
    assert out.read_bytes() == PROBE_OUTPUT
