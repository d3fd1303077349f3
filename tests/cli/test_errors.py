"""The CLI error boundary: every bad input ends in one line naming the file, exit status 2, no traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from st_builders import llama_folder, raw_safetensors, write_safetensors

from modeltrace.cli import main
from modeltrace.formats import READERS
from modeltrace.formats.safetensors import MAX_HEADER_BYTES


def run_main(args: list[str]) -> tuple[int, str, str]:
    """main() with its streams captured: (exit status, stdout, stderr)."""
    with CliRunner().isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


def _entry(dtype: str = "F32", shape: list[int] | None = None, offs: list[int] | None = None) -> dict[str, object]:
    return {"dtype": dtype, "shape": [2] if shape is None else shape, "data_offsets": offs or [0, 8]}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _truncated(p: Path) -> Path:
    write_safetensors(p, {"a": np.zeros((4, 4), np.float32), "b": np.zeros((4, 4), np.float32)})
    p.write_bytes(p.read_bytes()[:-10])
    return p


def _folder(tmp: Path, change: Callable[[Path], object]) -> Path:
    root = llama_folder(tmp / "m", np.random.default_rng(0), shards=2)
    change(root)
    return root


def _index(root: Path, rel: str) -> None:
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": rel}}))


ST = ".safetensors"
# name -> (build(tmp) -> path given to inspect, expected stderr with {p} for that path and {root} for its folder)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing_file": (lambda t: t / "absent.safetensors", "error: {p}: no such file or folder\n"),
    "empty_file": (lambda t: _write(t / "e.safetensors", b""), "error: {p}: file is empty\n"),
    "not_a_weight_file": (lambda t: _write(t / "w.bin", b"\x00garbage" * 8),
                          "error: {p}: not a known weight format (checked: safetensors, GGUF, PyTorch zip/pickle, "
                          "ONNX)\nhint: supported: " + ", ".join(READERS.names()) + "\n"),
    "truncated": (lambda t: _truncated(t / ("t" + ST)),
                  "error: {p} [tensor b]: data_offsets [64, 128] run past the end of the data (118 bytes)\n"),
    "header_longer_than_file": (lambda t: raw_safetensors(t / ("h" + ST), {"a": _entry()}, b"\0" * 8,
                                                          header_len=1000),
                                "error: {p}: header length 1000 is larger than the file (77 bytes); truncated?\n"),
    "absurd_header_length": (lambda t: raw_safetensors(t / ("h" + ST), {"a": _entry()}, b"\0" * 8,
                                                       header_len=(1 << 63) + 5),
                             f"error: {{p}}: header length {(1 << 63) + 5} exceeds the {MAX_HEADER_BYTES}-byte cap\n"),
    "offsets_out_of_range": (lambda t: raw_safetensors(t / ("o" + ST), {"a": _entry(shape=[4], offs=[8, 24])},
                                                       b"\0" * 16),
                             "error: {p} [tensor a]: data_offsets [8, 24] run past the end of the data (16 bytes)\n"),
    "overlapping_offsets": (lambda t: raw_safetensors(t / ("o" + ST), {"x": _entry(offs=[0, 8]),
                                                                      "y": _entry(offs=[6, 14])}, b"\0" * 16),
                            "error: {p} [tensor y]: tensors 'x' and 'y' overlap in the data buffer\n"),
    "unknown_dtype": (lambda t: raw_safetensors(t / ("d" + ST), {"a": _entry("Q4_K")}, b"\0" * 8),
                      "error: {p} [tensor a]: unknown dtype 'Q4_K'\n"),
    "shape_byte_mismatch": (lambda t: raw_safetensors(t / ("s" + ST), {"a": _entry("BF16", shape=[2, 3])},
                                                      b"\0" * 8),
                            "error: {p} [tensor a]: shape [2, 3] of BF16 needs 12 bytes but data_offsets span 8\n"),
    "index_names_missing_shard": (
        lambda t: _folder(t, lambda r: (r / "model-00002-of-00002.safetensors").unlink()),
        "error: {p}/model.safetensors.index.json: names shard 'model-00002-of-00002.safetensors', which is missing\n"),
    "shard_path_outside_folder": (
        lambda t: _folder(t, lambda r: _index(r, "../x.safetensors")),
        "error: {p}/model.safetensors.index.json: shard path '../x.safetensors' points outside the model folder\n"),
    "config_not_json": (
        lambda t: _folder(t, lambda r: (r / "config.json").write_text('{"model_type": "llama",')),
        ("error: {p}/config.json: invalid JSON at line 1 column 24: Expecting property name enclosed in double "
         "quotes\n")),
    "config_nested_too_deeply": (
        lambda t: _folder(t, lambda r: (r / "config.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000
                                                                      + "}")),
        "error: {p}/config.json: JSON nested too deeply\n"),
    "hostile_tensor_name": (
        lambda t: raw_safetensors(t / ("n" + ST), {"evil\x1b[2J\x07name\u202e": _entry("X1")}, b"\0" * 8),
        "error: {p} [tensor evil\\x1b[2J\\x07name\\u202e]: unknown dtype 'X1'\n"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    build, expected = CASES[case]
    path = build(tmp_path)
    code, out, err = run_main(["inspect", str(path)])
    assert (code, out) == (2, "")
    assert err == expected.format(p=path)
    assert "Traceback" not in err


def test_missing_hub_ref_has_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    code, out, err = run_main(["inspect", "hf:org/absent@v2"])
    assert (code, out) == (2, "")
    assert err == (f"error: hf:org/absent@v2: not in the local hub cache ({tmp_path})\n"
                   "hint: pass --download to fetch it, or set HF_HUB_CACHE\n")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    code, _, err = run_main(["--debug", "inspect", str(tmp_path / "absent")])
    assert code == 2
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith(f"error: {tmp_path / 'absent'}: no such file or folder\n")


def test_usage_errors_are_click_errors(tmp_path: Path) -> None:
    code, _, err = run_main(["inspect"])
    assert code == 2
    assert "Missing argument 'REF'" in err and "Traceback" not in err
