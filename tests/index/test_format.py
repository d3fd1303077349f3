"""The fingerprint file: exact bytes round trip, and every defect is one FormatError naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from modeltrace.errors import FormatError
from modeltrace.index import format as fmt
from modeltrace.index.fingerprint import fingerprint, idx_count, load, save


def raw_file(path: Path, header: dict[str, object] | bytes, body: bytes = b"", hlen: int | None = None) -> Path:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(fmt.MAGIC + struct.pack("<I", len(hb) if hlen is None else hlen) + hb + body)
    return path


def test_round_trip_keeps_every_array_and_equal_content_gives_equal_bytes() -> None:
    raw = fmt.RawFingerprint({"schema": fmt.SCHEMA, "version": 1, "x": "y"},
                             {"b": np.arange(6, dtype=np.int8).reshape(2, 3), "a": np.ones(3, dtype=np.float16)})
    data = fmt.dumps(raw)
    back = fmt.loads(data)
    assert back.header == {"schema": fmt.SCHEMA, "version": 1, "x": "y"}
    assert back.arrays["b"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back.arrays["a"].dtype == np.float16
    assert fmt.dumps(back) == data


def test_quantization_keeps_cosines() -> None:
    x = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    y = fmt.dequantize(*fmt.quantize(x))
    cos = np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.999


@pytest.mark.parametrize(("build", "message"), [
    (lambda p: p.write_bytes(b"NOPE" + b"\0" * 10), "not a modeltrace fingerprint (bad magic bytes)"),
    (lambda p: p.write_bytes(b"MTFP\x01"), "fingerprint truncated in its header length"),
    (lambda p: raw_file(p, b"{}", hlen=1 << 30), "fingerprint header is 1073741824 bytes, over the 8388608-byte cap"),
    (lambda p: raw_file(p, b"{}", hlen=100), "fingerprint truncated: header of 100 bytes, file has 2"),
    (lambda p: raw_file(p, b"{not json"), ("fingerprint header is not valid JSON (Expecting property name enclosed "
                                          "in double quotes)")),
    (lambda p: raw_file(p, b"[1]"), "fingerprint header is not a JSON object"),
    (lambda p: raw_file(p, {"schema": "other", "version": 1}), "schema is 'other', expected 'modeltrace.fingerprint'"),
    (lambda p: raw_file(p, {"schema": fmt.SCHEMA, "version": 99}),
     "fingerprint version 99 is newer than this modeltrace reads (1)"),
    (lambda p: raw_file(p, {"schema": fmt.SCHEMA, "version": 1,
                            "arrays": {"x": {"dtype": "f8", "shape": [1], "offset": 0, "nbytes": 8}}}),
     "array 'x': dtype 'f8' not one of i1, u1, i4, u8, f2, f4"),
    (lambda p: raw_file(p, {"schema": fmt.SCHEMA, "version": 1,
                            "arrays": {"x": {"dtype": "f4", "shape": [4], "offset": 0, "nbytes": 12}}}),
     "array 'x': shape [4] of f4 needs 16 bytes, table says 12"),
    (lambda p: raw_file(p, {"schema": fmt.SCHEMA, "version": 1,
                            "arrays": {"x": {"dtype": "f4", "shape": [4], "offset": 0, "nbytes": 16}}}, b"\0" * 8),
     "array 'x': bytes 0..16 lie beyond the end of the file; truncated?"),
    (lambda p: raw_file(p, {"schema": fmt.SCHEMA, "version": 1,
                            "arrays": {"x": {"dtype": "f4", "shape": [-1], "offset": 0, "nbytes": 0}}}),
     "array 'x': shape [-1] is not a list of at most 4 sizes"),
])
def test_malformed_files_are_one_format_error_naming_the_file(tmp_path: Path, build, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad.mtfp"
    build(p)
    with pytest.raises(FormatError) as err:
        load(p)
    assert str(err.value) == f"{p}: {message}"


def test_a_fingerprint_missing_its_arrays_is_refused(tmp_path: Path, family: dict[str, Path]) -> None:
    good = save(fingerprint(str(family["base"])), tmp_path / "good.mtfp")
    raw = fmt.read(tmp_path / "good.mtfp")
    del raw.arrays["layers/0/idx_in.q"]
    (tmp_path / "cut.mtfp").write_bytes(fmt.dumps(raw))
    with pytest.raises(FormatError) as err:
        load(tmp_path / "cut.mtfp")
    assert str(err.value) == f"{tmp_path / 'cut.mtfp'}: fingerprint lacks array 'layers/0/idx_in.q'"
    assert good.size == (tmp_path / "good.mtfp").stat().st_size


def test_fingerprint_holds_the_sampled_units_and_the_artifacts(family: dict[str, Path], tmp_path: Path) -> None:
    fp = save(fingerprint(str(family["base"])), tmp_path / "fp.mtfp")
    back = load(tmp_path / "fp.mtfp")
    assert len(back.layers) == 3
    assert back.layers[0].idx_in.shape == (idx_count(96), 32) == (96, 32)
    assert back.basis is not None and back.basis.tokens[:3] == ("e", "t", "a")
    assert set(back.meta["files"]) == {"model.safetensors"}
    assert back.meta["tokenizer"]["size"] == 128
    assert back.sha256 == fp.sha256
