"""The safetensors reader: exact values for every dtype, lazy metadata, sharded folders, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from st_builders import llama_folder, raw_safetensors, tiny_llama, write_safetensors

from modeltrace.errors import FormatError
from modeltrace.formats import detect_format, open_file
from modeltrace.formats.safetensors import MAX_HEADER_BYTES, SafetensorsReader
from modeltrace.model import Model


def test_round_trip_plain_dtypes(tmp_path: Path, rng: np.random.Generator) -> None:
    tensors = {
        "f32": rng.standard_normal((3, 4), dtype=np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2, 2)),
        "i64": np.arange(7, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    p = write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt"})
    assert detect_format(p) == "safetensors"
    with open_file(p) as src:
        infos = src.infos()
        assert list(infos) == list(tensors)  # file order
        assert {n: (i.shape, i.dtype) for n, i in infos.items()} == {
            "f32": ((3, 4), "F32"), "f16": ((5,), "F16"), "f64": ((2, 2, 2), "F64"), "i64": ((7,), "I64"),
            "scalar": ((), "F32"), "empty": ((0, 3), "F32")}
        assert src.metadata() == {"format": "pt"}
        for name, arr in tensors.items():
            got = src.read(name)
            assert got.dtype == np.float32 and got.shape == arr.shape
            np.testing.assert_array_equal(got, arr.astype(np.float32))
            into = src.read_into(name, np.empty(16, dtype=np.float32))
            assert into.shape == arr.shape  # scalars and empty tensors too
            np.testing.assert_array_equal(into, arr.astype(np.float32))
        assert sum(i.numel for i in infos.values()) == 12 + 5 + 8 + 7 + 1 + 0


def _torch_file(tmp_path: Path, t: torch.Tensor) -> Path:
    p = tmp_path / "t.safetensors"
    save_file({"t": t.contiguous()}, str(p))
    return p


@pytest.mark.parametrize("dtype, bits, st_name", [
    (torch.bfloat16, torch.int16, "BF16"),
    (torch.float16, torch.int16, "F16"),
    (torch.float8_e4m3fn, torch.uint8, "F8_E4M3"),
    (torch.float8_e5m2, torch.uint8, "F8_E5M2"),
])
def test_every_bit_pattern_matches_torch(tmp_path: Path, dtype: torch.dtype, bits: torch.dtype,
                                         st_name: str) -> None:
    """Every possible value of each narrow float type reads back exactly as torch converts it."""
    n = 1 << (8 * torch.empty(0, dtype=bits).element_size())
    if bits == torch.int16:
        patterns = torch.arange(-(n // 2), n // 2, dtype=torch.int32).to(torch.int16)
    else:
        patterns = torch.arange(n, dtype=torch.int32).to(torch.uint8)
    values = patterns.view(dtype).reshape(-1, 16)
    p = _torch_file(tmp_path, values)
    with SafetensorsReader(p) as src:
        assert src.info("t").dtype == st_name
        got = src.read("t")
        rows = src.read_rows("t", 3, 5)
    want = values.float().numpy()
    np.testing.assert_array_equal(got, want)  # NaNs compare equal here, everything else bit for bit
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(rows, want[3:5])


def test_bf16_random_weights_match_torch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(64, 48, generator=g) * 3).to(torch.bfloat16)
    with SafetensorsReader(_torch_file(tmp_path, t)) as src:
        np.testing.assert_array_equal(src.read("t"), t.float().numpy())


def test_read_rows_slices_without_full_read(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.standard_normal((10, 3), dtype=np.float32)
    p = write_safetensors(tmp_path / "m.safetensors", {"a": a})
    with SafetensorsReader(p) as src:
        np.testing.assert_array_equal(src.read_rows("a", 2, 5), a[2:5])
        np.testing.assert_array_equal(src.read_rows("a", 8, 100), a[8:])
        assert src.read_rows("a", 4, 4).shape == (0, 3)
        assert src.read_rows("a", 12, 15).shape == (0, 3)  # past the end: empty, as numpy slicing gives


def test_metadata_does_not_touch_the_data(tmp_path: Path, rng: np.random.Generator) -> None:
    p = write_safetensors(tmp_path / "m.safetensors", tiny_llama(rng))
    src = SafetensorsReader(p)
    assert len(src.infos()) == 21
    assert src._mm is None and src._fd is None  # names, shapes and dtypes come from the header alone
    src.read("model.norm.weight")
    assert src._fd is not None
    src.close()
    assert src._fd is None


def test_file_truncated_after_opening(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.standard_normal((64, 4), dtype=np.float32)
    p = write_safetensors(tmp_path / "m.safetensors", {"a": a})
    with SafetensorsReader(p) as src:
        size = p.stat().st_size
        with open(p, "r+b") as fh:
            fh.truncate(size - 100)
        with pytest.raises(FormatError) as err:
            src.read("a")
    assert str(err.value) == f"{p}: file ended at byte {size - 100} while reading tensor data; truncated?"


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3",
                                   "F8_E5M2"])
def test_chunked_reads_equal_whole_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               dtype: str) -> None:
    """Tensors larger than the conversion chunk read back exactly as one-shot conversion gives them."""
    from modeltrace.formats import base
    from modeltrace.formats.base import DTYPE_SIZES, raw_to_float32

    monkeypatch.setattr(base, "CONVERT_CHUNK_BYTES", 64)
    monkeypatch.setattr(base, "_POPULATE_MIN_BYTES", 1024)  # the large-output allocation path too
    raw = np.random.default_rng(3).integers(0, 256, size=1000 * DTYPE_SIZES[dtype], dtype=np.uint8)
    if dtype == "BOOL":
        raw = raw % 2
    if dtype == "F64":  # random bytes would overflow float32 (a warning, an error under pytest)
        raw = np.random.default_rng(3).standard_normal(1000).view(np.uint8)
    p = raw_safetensors(tmp_path / "m.safetensors", {"t": {"dtype": dtype, "shape": [1000],
                                                           "data_offsets": [0, raw.size]}}, raw.tobytes())
    want = raw_to_float32(raw, dtype)
    buf = np.full(1005, -7.0, dtype=np.float32)
    with SafetensorsReader(p) as src:
        got = src.read("t")
        rows = src.read_rows("t", 37, 911)
        into = src.read_into("t", buf)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(rows, want[37:911])
    np.testing.assert_array_equal(into, want)
    assert into.shape == (1000,) and np.shares_memory(into, buf)
    np.testing.assert_array_equal(buf[1000:], -7.0)  # past the tensor, the buffer is left alone


def test_sharded_folder_reads_like_single_file(tmp_path: Path) -> None:
    single = Model.open(str(llama_folder(tmp_path / "one", np.random.default_rng(5))))
    sharded = Model.open(str(llama_folder(tmp_path / "three", np.random.default_rng(5), shards=3)))
    with single, sharded:
        assert [p.name for p in sharded.weight_files] == [
            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"]
        a, b = single.source.infos(), sharded.source.infos()
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name].shape == b[name].shape
            np.testing.assert_array_equal(single.source.read(name), sharded.source.read(name))
        assert b["model.norm.weight"].file.endswith(("00001-of-00003.safetensors", "00002-of-00003.safetensors",
                                                      "00003-of-00003.safetensors"))


def test_read_into_reuses_one_buffer_across_a_sharded_model(tmp_path: Path) -> None:
    with Model.open(str(llama_folder(tmp_path / "three", np.random.default_rng(5), shards=3))) as model:
        src = model.source
        infos = src.infos()
        buf = src.read_buffer()
        assert buf.dtype == np.float32 and buf.shape == (max(i.numel for i in infos.values()),)
        assert src.read_buffer(["model.norm.weight"]).shape == (infos["model.norm.weight"].numel,)
        assert src.read_buffer([]).shape == (0,)
        with pytest.raises(FormatError):
            src.read_buffer(["no.such.tensor"])
        for name, info in infos.items():
            got = src.read_into(name, buf)
            assert got.shape == info.shape and got.dtype == np.float32 and np.shares_memory(got, buf)
            np.testing.assert_array_equal(got, src.read(name))


def test_read_into_default_copies_what_read_returns(tmp_path: Path) -> None:
    """Readers without their own `read_into` get one from the base class."""
    from modeltrace.formats.base import TensorInfo, TensorSource

    class Fixed(TensorSource):
        def infos(self) -> dict[str, TensorInfo]:
            return {"t": TensorInfo("t", (2, 3), "F32", "x")}

        def read(self, name: str) -> np.ndarray:
            return np.arange(6, dtype=np.float32).reshape(2, 3)

    buf = np.zeros((4, 2), dtype=np.float32)  # any shape with enough elements
    got = Fixed(tmp_path).read_into("t", buf)
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.shares_memory(got, buf) and buf.ravel()[6:].tolist() == [0.0, 0.0]


def test_read_into_rejects_unusable_buffers(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "m.safetensors", {"a": np.ones((3, 4), dtype=np.float32)})
    ro = np.zeros(12, dtype=np.float32)
    ro.flags.writeable = False
    cases: list[tuple[object, type[Exception], str]] = [
        (np.zeros(12, dtype=np.float64), TypeError, "out must be a float32 numpy array, got float64"),
        ([0.0] * 12, TypeError, "out must be a float32 numpy array, got list"),
        (np.zeros(24, dtype=np.float32)[::2], ValueError, "out must be a writable C-contiguous array"),
        (ro, ValueError, "out must be a writable C-contiguous array"),
        (np.zeros(11, dtype=np.float32), ValueError, "out has 11 elements, the tensor needs 12"),
    ]
    with SafetensorsReader(p) as src:
        for out, exc, message in cases:
            with pytest.raises(exc) as err:
                src.read_into("a", out)  # type: ignore[arg-type]
            assert str(err.value) == message


def _entry(dtype: str = "F32", shape: list[int] | None = None, offs: list[int] | None = None) -> dict[str, object]:
    return {"dtype": dtype, "shape": [2] if shape is None else shape, "data_offsets": offs or [0, 8]}


# (name, builder, expected message after "<path>")
BAD: list[tuple[str, object, str]] = [
    ("too_short", lambda p: p.write_bytes(b"\x05\x00\x00"),
     ": file is 3 bytes, too short for a safetensors header"),
    ("header_longer_than_file", lambda p: raw_safetensors(p, {"a": _entry()}, b"\0" * 8, header_len=1000),
     ": header length 1000 is larger than the file (77 bytes); truncated?"),
    ("absurd_header", lambda p: raw_safetensors(p, {"a": _entry()}, b"\0" * 8, header_len=1 << 40),
     f": header length {1 << 40} exceeds the {MAX_HEADER_BYTES}-byte cap"),
    ("header_not_json", lambda p: raw_safetensors(p, b'{"a": ', b""),
     ": header is not valid JSON (Expecting value: line 1 column 7 (char 6))"),
    ("header_not_utf8", lambda p: raw_safetensors(p, b'{"\xff": 1}', b""),
     ": header is not valid JSON ('utf-8' codec can't decode byte 0xff in position 2: invalid start byte)"),
    ("header_not_object", lambda p: raw_safetensors(p, b"[1, 2]", b""), ": header is not a JSON object"),
    ("entry_not_object", lambda p: raw_safetensors(p, {"a": 1}, b""), " [tensor a]: header entry is not an object"),
    ("unknown_dtype", lambda p: raw_safetensors(p, {"a": _entry("F7")}, b"\0" * 8), " [tensor a]: unknown dtype 'F7'"),
    ("negative_shape", lambda p: raw_safetensors(p, {"a": _entry(shape=[-2])}, b"\0" * 8),
     " [tensor a]: invalid shape [-2]"),
    ("reversed_offsets", lambda p: raw_safetensors(p, {"a": _entry(offs=[8, 0])}, b"\0" * 8),
     " [tensor a]: invalid data_offsets [8, 0]"),
    ("offsets_out_of_range", lambda p: raw_safetensors(p, {"a": _entry(shape=[100], offs=[0, 400])}, b"\0" * 16),
     " [tensor a]: data_offsets [0, 400] run past the end of the data (16 bytes)"),
    ("shape_bytes_mismatch", lambda p: raw_safetensors(p, {"a": _entry(shape=[3])}, b"\0" * 8),
     " [tensor a]: shape [3] of F32 needs 12 bytes but data_offsets span 8"),
    ("overlapping", lambda p: raw_safetensors(p, {"a": _entry(offs=[0, 8]), "b": _entry(offs=[4, 12])}, b"\0" * 12),
     " [tensor b]: tensors 'a' and 'b' overlap in the data buffer"),
    # what the safetensors library refuses too (or, for duplicate keys, should)
    ("duplicate_key", lambda p: raw_safetensors(p, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                                                 b'"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}',
                                                 b"\0" * 8),
     ": header is not valid: key 'a' appears twice in one object"),
    ("duplicate_field", lambda p: raw_safetensors(p, b'{"a": {"dtype": "F32", "dtype": "F16", "shape": [2], '
                                                   b'"data_offsets": [0, 8]}}', b"\0" * 8),
     ": header is not valid: key 'dtype' appears twice in one object"),
    ("dtype_not_a_string", lambda p: raw_safetensors(p, {"a": _entry([])}, b"\0" * 8),  # type: ignore[arg-type]
     " [tensor a]: unknown dtype []"),  # found by tests/fuzz: a TypeError (unhashable list) before
    ("boolean_shape", lambda p: raw_safetensors(p, {"a": _entry(shape=[True, 2])}, b"\0" * 8),
     " [tensor a]: invalid shape [True, 2]"),
    ("float_shape", lambda p: raw_safetensors(p, {"a": _entry(shape=[2.0])}, b"\0" * 8),  # type: ignore[list-item]
     " [tensor a]: invalid shape [2.0]"),
    ("boolean_offsets", lambda p: raw_safetensors(p, {"a": _entry(shape=[0], offs=[False, False])}, b""),
     " [tensor a]: invalid data_offsets [False, False]"),
    ("shape_past_u64", lambda p: raw_safetensors(p, b'{"a": {"dtype": "F32", "shape": [18446744073709551616, 0], '
                                                  b'"data_offsets": [0, 0]}}', b""),
     " [tensor a]: invalid shape [18446744073709551616, 0]"),
    ("empty_shape_beyond_numpy", lambda p: raw_safetensors(p, b'{"a": {"dtype": "F32", "shape": [9223372036854775808, '
                                                            b'0], "data_offsets": [0, 0]}}', b""),
     f" [tensor a]: shape [9223372036854775808, 0] describes more than {2**40} elements"),  # found by tests/fuzz
    ("overlong_integer", lambda p: raw_safetensors(p, b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], '
                                                    b'"data_offsets": [0, 0]}}', b""),
     " [tensor a]: invalid shape [inf]"),
    ("overlap_behind_zero_size_tensor", lambda p: raw_safetensors(
        p, {"a": _entry(shape=[4], offs=[0, 16]), "z": _entry(shape=[0], offs=[4, 4]),
            "b": _entry(shape=[2], offs=[4, 12])}, b"\0" * 16),
     " [tensor z]: tensors 'a' and 'z' overlap in the data buffer"),
    ("gap", lambda p: raw_safetensors(p, {"a": _entry(offs=[0, 8]), "b": _entry(offs=[12, 20])}, b"\0" * 20),
     " [tensor b]: data_offsets leave bytes [8, 12) before it unused"),
    ("trailing_bytes", lambda p: raw_safetensors(p, {"a": _entry()}, b"\0" * 12),
     ": the data buffer holds 4 bytes after the last tensor"),
    ("metadata_not_an_object", lambda p: raw_safetensors(p, {"__metadata__": [1], "a": _entry()}, b"\0" * 8),
     ": __metadata__ is not an object of strings"),
    ("metadata_not_strings", lambda p: raw_safetensors(p, {"__metadata__": {"k": {"x": 1}}, "a": _entry()},
                                                       b"\0" * 8),
     ": __metadata__ is not an object of strings"),
    ("nested_past_serde_limit", lambda p: raw_safetensors(
        p, b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": ' + b"[" * 200 + b"]" * 200 + b"}}",
        b"\0" * 8),
     ": header nests deeper than 128 levels"),
    ("nested_past_python_limit", lambda p: raw_safetensors(p, b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
     ": header nests deeper than 128 levels"),
]


@pytest.mark.parametrize("case, build, message", BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_format_error_naming_the_file(tmp_path: Path, case: str, build: object,
                                                     message: str) -> None:
    p = tmp_path / f"{case}.safetensors"
    build(p)  # type: ignore[operator]
    with pytest.raises(FormatError) as err:
        SafetensorsReader(p)
    assert str(err.value) == f"{p}{message}"
    assert err.value.path == str(p)


def test_truncated_file(tmp_path: Path, rng: np.random.Generator) -> None:
    p = write_safetensors(tmp_path / "m.safetensors", {"a": rng.standard_normal((4, 4), dtype=np.float32),
                                                       "b": rng.standard_normal((4, 4), dtype=np.float32)})
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(FormatError) as err:
        SafetensorsReader(p)
    assert str(err.value) == f"{p} [tensor b]: data_offsets [64, 128] run past the end of the data (118 bytes)"
    assert err.value.tensor == "b"


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FormatError) as err:
        open_file(tmp_path / "nope.safetensors")
    assert str(err.value) == f"{tmp_path / 'nope.safetensors'}: no such file"
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(FormatError) as err:
        open_file(tmp_path / "empty.safetensors")
    assert str(err.value) == f"{tmp_path / 'empty.safetensors'}: file is empty"


def test_unknown_tensor_name(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "m.safetensors", {"a": np.zeros(2, dtype=np.float32)})
    with SafetensorsReader(p) as src, pytest.raises(FormatError) as err:
        src.read("b")
    assert str(err.value) == f"{p} [tensor b]: no such tensor"


def test_chosen_by_content_not_extension(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "weights.bin", {"a": np.ones(3, dtype=np.float32)})
    assert detect_format(p) == "safetensors"
    q = tmp_path / "fake.safetensors"
    q.write_text(json.dumps({"not": "weights"}))
    with pytest.raises(FormatError, match="not a known weight format"):
        open_file(q)


# Cases the safetensors library itself accepts: a duplicate key (it keeps the last entry silently, so two
# readers can see two different tensors under one name), and an empty tensor whose shape numpy cannot hold.
LIBRARY_ACCEPTS = {"duplicate_key", "empty_shape_beyond_numpy"}  # the second: empty, but numpy cannot shape it


@pytest.mark.parametrize("case, build, message", BAD, ids=[b[0] for b in BAD])
def test_the_safetensors_library_refuses_the_same_files(tmp_path: Path, case: str, build: object,
                                                        message: str) -> None:
    from safetensors import SafetensorError, safe_open

    p = tmp_path / f"{case}.safetensors"
    build(p)  # type: ignore[operator]
    if case in LIBRARY_ACCEPTS:
        with safe_open(p, framework="np"):
            pass
        return
    with pytest.raises((SafetensorError, OSError)), safe_open(p, framework="np"):
        pass


def test_doubles_beyond_float32_become_inf_without_a_warning(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "d.safetensors", {"d": np.array([1e300, -1e300, 1.5], np.float64)})
    with SafetensorsReader(p) as src:  # warnings are errors in the tests: a RuntimeWarning would fail here
        np.testing.assert_array_equal(src.read("d"), [np.inf, -np.inf, 1.5])
        np.testing.assert_array_equal(src.read_rows("d", 0, 1), [np.inf])


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F8_E4M3", "I8"])
def test_threaded_conversion_equals_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Large reads are split across READ_THREADS threads; the values are the same, to the bit."""
    from modeltrace.formats import base
    from modeltrace.formats.base import DTYPE_SIZES, raw_to_float32

    monkeypatch.setattr(base, "CONVERT_CHUNK_BYTES", 64)
    monkeypatch.setattr(base, "THREADED_MIN_BYTES", 256)
    monkeypatch.setattr(base, "READ_THREADS", 3)
    monkeypatch.setattr(base, "_POOL", None)
    raw = np.random.default_rng(5).integers(0, 256, size=1001 * DTYPE_SIZES[dtype], dtype=np.uint8)
    p = raw_safetensors(tmp_path / "m.safetensors", {"t": {"dtype": dtype, "shape": [1001],
                                                           "data_offsets": [0, raw.size]}}, raw.tobytes())
    with SafetensorsReader(p) as src:
        got = src.read("t")
        buf = src.read_buffer()
        into = src.read_into("t", buf)
    np.testing.assert_array_equal(got.view(np.uint32), raw_to_float32(raw, dtype).view(np.uint32))
    np.testing.assert_array_equal(into.view(np.uint32), got.view(np.uint32))
    fd = os.open(p, os.O_RDONLY)  # a read running past the end of the file: the last part raises, in the caller
    try:
        with pytest.raises(FormatError) as err:
            base.pread_float32(fd, p, p.stat().st_size - raw.size, raw.size + 64 * DTYPE_SIZES[dtype], dtype)
        assert str(err.value).endswith("while reading tensor data; truncated?")
    finally:
        os.close(fd)


def test_a_fifo_is_not_opened(tmp_path: Path) -> None:
    from modeltrace.formats import detect_format

    p = tmp_path / "model.safetensors"
    os.mkfifo(p)
    with pytest.raises(FormatError) as err:
        detect_format(p)  # opening a FIFO for reading blocks until a writer comes
    assert str(err.value) == f"{p}: not a regular file"


def test_threaded_reads_work_in_a_forked_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked after the pool was made has none of its threads: it makes its own, and does not hang."""
    from modeltrace.formats import base

    monkeypatch.setattr(base, "THREADED_MIN_BYTES", 256)
    monkeypatch.setattr(base, "READ_THREADS", 2)
    raw = np.arange(4096, dtype=np.uint16)
    p = raw_safetensors(tmp_path / "m.safetensors", {"t": {"dtype": "BF16", "shape": [4096],
                                                           "data_offsets": [0, raw.nbytes]}}, raw.tobytes())
    with SafetensorsReader(p) as src:
        want = src.read("t")  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when the read matches, within the alarm
        import signal

        signal.alarm(20)
        with SafetensorsReader(p) as src:
            os._exit(0 if np.array_equal(src.read("t"), want) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
