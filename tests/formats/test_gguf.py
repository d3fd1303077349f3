"""GGUF reader: shapes in numpy order, metadata, dequantized values, and hostile headers."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

from modeltrace.errors import FormatError
from modeltrace.formats import detect_format, open_file
from modeltrace.formats.gguf import GGUFReader, sniff
from modeltrace.formats.gguf_write import write_gguf

# Worst-case error relative to the tensor's largest magnitude, per stored type.
TOLERANCE = {"F32": 0.0, "F16": 1e-3, "Q8_0": 1e-2, "Q6_K": 4e-2, "Q5_K": 6e-2, "Q4_K": 0.12}


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "token_embd.weight": rng.standard_normal((40, 256)).astype(np.float32),
        "blk.0.attn_q.weight": (rng.standard_normal((512, 256)) * 0.02).astype(np.float32),
        "blk.0.ffn_down.weight": rng.standard_normal((16, 96)).astype(np.float32),  # rows not a 256 multiple
        "blk.0.attn_norm.weight": (1 + 0.1 * rng.standard_normal(256)).astype(np.float32),
    }


TOKENIZER = {"model": "gpt2", "tokens": [f"t{i}" for i in range(100)], "merges": ["t 0", "t 1"],
             "bos_token_id": 1, "eos_token_id": 2}


def test_sniff() -> None:
    assert sniff(b"GGUF\x03\x00\x00\x00")
    assert not sniff(b"GGML")


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K", "Q6_K"])
def test_round_trip(tmp_path: Path, rng: np.random.Generator, qtype: str) -> None:
    tensors = _tensors(rng)
    path = write_gguf(tmp_path / f"m-{qtype}.gguf", tensors, qtype, metadata={"llama.block_count": 1},
                      tokenizer=TOKENIZER)
    assert detect_format(path) == "gguf"
    with open_file(path) as src:
        assert isinstance(src, GGUFReader)
        infos = src.infos()
        assert list(infos) == list(tensors)
        assert {n: i.shape for n, i in infos.items()} == {n: a.shape for n, a in tensors.items()}
        assert sum(i.numel for i in infos.values()) == 40 * 256 + 512 * 256 + 16 * 96 + 256
        assert infos["blk.0.attn_q.weight"].dtype == qtype
        assert infos["blk.0.attn_q.weight"].quantization == (None if qtype == "F16" else qtype)
        assert infos["blk.0.attn_norm.weight"].dtype == "F32"  # 1-D tensors stay F32
        expected_down = {"F16": "F16", "Q8_0": "Q8_0", "Q4_K": "F16", "Q6_K": "F16"}[qtype]
        assert infos["blk.0.ffn_down.weight"].dtype == expected_down
        for name, original in tensors.items():
            got = src.read(name)
            assert got.dtype == np.float32 and got.shape == original.shape
            rel = np.abs(got - original).max() / np.abs(original).max()
            assert rel <= TOLERANCE[infos[name].dtype], (name, rel)
        q = src.read("blk.0.attn_q.weight")
        np.testing.assert_array_equal(src.read_rows("blk.0.attn_q.weight", 100, 103), q[100:103])
        np.testing.assert_array_equal(src.read_rows("blk.0.attn_norm.weight", 3, 5),
                                      src.read("blk.0.attn_norm.weight")[3:5])


def test_metadata_and_tokenizer(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_gguf(tmp_path / "m.gguf", _tensors(rng), "Q8_0",
                      metadata={"llama.block_count": 1, "llama.rope.freq_base": 10000.0,
                                "general.tags": ["a", "b"]},
                      tokenizer=TOKENIZER)
    with GGUFReader(path) as src:
        meta = src.metadata()
        assert meta["general.architecture"] == "llama"
        assert meta["general.file_type"] == 7
        assert meta["llama.block_count"] == 1
        assert meta["llama.rope.freq_base"] == 10000.0
        assert meta["general.tags"] == ["a", "b"]
        assert meta["tokenizer.ggml.merges"] == ["t 0", "t 1"]
        assert meta["tokenizer.ggml.tokens"] == {"array": "string", "length": 100,
                                                 "head": ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"]}
        assert meta["GGUF.version"] == 3
        tok = src.tokenizer_metadata()
        assert tok["tokenizer.ggml.tokens"] == TOKENIZER["tokens"]
        assert tok["tokenizer.ggml.bos_token_id"] == 1
        assert src.array("tokenizer.ggml.tokens")[-1] == "t99"
        assert len(src.metadata(full_arrays=True)["tokenizer.ggml.tokens"]) == 100


def test_renamed_gguf_is_found_by_content(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_gguf(tmp_path / "m.gguf", _tensors(rng), "F16")
    renamed = tmp_path / "weights.dat"
    path.rename(renamed)
    assert detect_format(renamed) == "gguf"
    with open_file(renamed) as src:
        assert src.format == "gguf"


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def good(tmp_path: Path, rng: np.random.Generator) -> Path:
    return write_gguf(tmp_path / "good.gguf", _tensors(rng), "Q8_0", tokenizer=TOKENIZER)


def test_truncated_data(tmp_path: Path, good: Path) -> None:
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert err.value.path == str(bad)
    assert err.value.tensor == "blk.0.attn_norm.weight"
    assert "runs past the end of the data" in str(err.value) and "truncated?" in str(err.value)


def test_truncated_header(tmp_path: Path, good: Path) -> None:
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value).startswith(f"{bad}: ")
    assert "truncated or corrupt header" in str(err.value)


def test_absurd_tensor_count(tmp_path: Path, good: Path) -> None:
    raw = bytearray(good.read_bytes())
    raw[8:16] = struct.pack("<Q", 2**60)
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(bytes(raw))
    t0 = time.monotonic()
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert time.monotonic() - t0 < 1.0
    kv = struct.unpack("<Q", raw[16:24])[0]
    assert str(err.value) == (f"{bad}: header claims {2**60} tensors and {kv} key-values, which cannot "
                              f"fit in a file of {len(raw)} bytes")


def test_absurd_array_length_does_not_hang(tmp_path: Path) -> None:
    # One key "a" holding an array of uint8 that claims 2**62 items.
    raw = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a"
           + struct.pack("<IIQ", 9, 0, 2**62))
    bad = tmp_path / "array.gguf"
    bad.write_bytes(raw + b"\x00" * 64)
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value) == (f"{bad}: value of key a ({2**62} items) at byte 49 needs {2**62} bytes but "
                              "the file ends at 113; truncated or corrupt header")


def test_bad_magic(tmp_path: Path, good: Path) -> None:
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGUX" + good.read_bytes()[4:])
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value) == f"{bad}: bad magic b'GGUX', expected b'GGUF'"
    with pytest.raises(FormatError):
        open_file(bad)  # no reader claims it


def test_bad_version(tmp_path: Path, good: Path) -> None:
    raw = bytearray(good.read_bytes())
    raw[4:8] = struct.pack("<I", 7)
    bad = tmp_path / "v7.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value) == f"{bad}: GGUF version 7 is not supported (supported: 2, 3)"


def test_unknown_tensor_type(tmp_path: Path) -> None:
    name = b"w"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 32, 9999, 0)
    raw = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info
    bad = tmp_path / "type.gguf"
    bad.write_bytes(raw + b"\x00" * 256)
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value) == f"{bad} [tensor w]: unknown tensor type 9999"


def test_hostile_tensor_name_is_escaped(tmp_path: Path) -> None:
    name = b"\x1b[2Jw"
    info = struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 32, 9999, 0)
    bad = tmp_path / "ansi.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info + b"\x00" * 256)
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value) == f"{bad} [tensor \\x1b[2Jw]: unknown tensor type 9999"


def test_unknown_value_type(tmp_path: Path) -> None:
    raw = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77)
    bad = tmp_path / "vtype.gguf"
    bad.write_bytes(raw + b"\x00" * 64)
    with pytest.raises(FormatError) as err:
        GGUFReader(bad)
    assert str(err.value) == f"{bad}: value of key k: unknown value type 77"


def test_tiny_file(tmp_path: Path) -> None:
    bad = tmp_path / "tiny.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value) == f"{bad}: file is 6 bytes, too short for a GGUF header (24 bytes)"


# ---------------------------------------------------------------------------- real models


@pytest.mark.parametrize(("model_id", "numel", "count", "types"), [
    ("smollm2-135m-instruct-q4_1", 134_515_008, 272, {"F32", "Q4_1", "Q8_0"}),
    ("gemma-3-270m-q4_k_m", 268_098_176, 236, {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}),
    ("qwen2.5-coder-0.5b-instruct-awq-q4_k_m", 630_167_424, 291, {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}),
])
def test_real_gguf_models(realmodels: Path, model_id: str, numel: int, count: int, types: set[str]) -> None:
    files = sorted((realmodels / model_id).glob("*.gguf"))
    if not files:
        pytest.skip(f"{model_id} absent from {realmodels}")
    with open_file(files[0]) as src:
        infos = src.infos()
        assert len(infos) == count
        assert sum(i.numel for i in infos.values()) == numel
        assert {i.dtype for i in infos.values()} == types
        assert src.metadata()["tokenizer.ggml.tokens"]["length"] > 40_000
        # One tensor of each type, dequantized: finite, right shape, not all zero.
        seen: set[str] = set()
        for name, info in infos.items():
            if info.dtype in seen or info.numel > 5_000_000:
                continue
            seen.add(info.dtype)
            values = src.read(name)
            assert values.shape == info.shape
            assert np.isfinite(values).all() and np.abs(values).max() > 0


# ---------------------------------------------------------------------------- hostile layouts, byte by byte


def _f32_tensors(tmp_path: Path, offsets: list[int], data: bytes, alignment: int = 32) -> Path:
    from format_builders import gguf_file, gguf_kv_u32

    kvs = [gguf_kv_u32("general.alignment", alignment)] if alignment != 32 else []
    infos = [(f"t{k}", (8,), 0, off) for k, off in enumerate(offsets)]  # 8 F32 values = 32 bytes each
    return gguf_file(tmp_path / "t.gguf", kvs, infos, data, alignment=alignment)


def test_byte_built_tensors_read_back(tmp_path: Path) -> None:
    data = np.arange(16, dtype="<f4").tobytes()
    with GGUFReader(_f32_tensors(tmp_path, [0, 32], data)) as src:
        np.testing.assert_array_equal(src.read("t1"), np.arange(8, 16, dtype=np.float32))


def test_misaligned_tensor_is_refused(tmp_path: Path) -> None:
    path = _f32_tensors(tmp_path, [0, 36], bytes(96))
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == f"{path} [tensor t1]: tensor data offset 36 is not a multiple of the alignment (32)"


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    path = _f32_tensors(tmp_path, [0, 64, 32, 0], bytes(96))
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == f"{path} [tensor t3]: tensors 't0' and 't3' overlap in the data"


def test_token_types_that_are_not_numbers_are_refused(tmp_path: Path) -> None:
    from format_builders import gguf_file, gguf_kv_array, gguf_string

    items = gguf_string("a") + gguf_string("b")
    kvs = [gguf_kv_array("tokenizer.ggml.tokens", 8, items, 2),
           gguf_kv_array("tokenizer.ggml.token_type", 8, items, 2)]
    path = gguf_file(tmp_path / "tt.gguf", kvs, [], b"")
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == (f"{path}: key tokenizer.ggml.token_type is an array of string, not of int16 or "
                              "int32 or int64 or int8 or uint16 or uint32 or uint64 or uint8")


def test_token_id_that_is_a_string_is_refused(tmp_path: Path) -> None:
    from format_builders import gguf_file, gguf_kv_str

    path = gguf_file(tmp_path / "id.gguf", [gguf_kv_str("tokenizer.ggml.bos_token_id", "1")], [], b"")
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value).startswith(f"{path}: key tokenizer.ggml.bos_token_id has type string, not ")


def test_tokens_that_are_numbers_are_refused(tmp_path: Path) -> None:
    from format_builders import gguf_file, gguf_kv_array

    path = gguf_file(tmp_path / "tok.gguf", [gguf_kv_array("tokenizer.ggml.tokens", 4, bytes(8), 2)], [], b"")
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == f"{path}: key tokenizer.ggml.tokens is an array of uint32, not of string"


def test_overlong_tensor_name_is_refused(tmp_path: Path) -> None:
    from format_builders import gguf_file

    path = gguf_file(tmp_path / "name.gguf", [], [("model." * 1000, (8,), 0, 0)], bytes(32))
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == f"{path}: tensor info 0 has a name of 6000 bytes, over the 4096-byte cap"


def test_empty_shape_beyond_numpy_is_a_format_error(tmp_path: Path) -> None:
    from format_builders import gguf_file

    path = gguf_file(tmp_path / "e.gguf", [], [("w", (0, 4, 2**62), 0, 0)], b"")
    with pytest.raises(FormatError) as err:
        GGUFReader(path)
    assert str(err.value) == f"{path} [tensor w]: shape [0, 4, {2**62}] describes more than {2**40} elements"


def test_infinite_block_scale_reads_as_inf_and_nan_without_a_warning(tmp_path: Path) -> None:
    # found by tests/fuzz: a Q8_0 block whose f16 scale is inf made numpy warn on stderr
    from format_builders import gguf_file

    block = struct.pack("<e", float("inf")) + bytes([1, 0] + [0] * 30)  # scale inf, q = 1, 0, 0, ...
    path = gguf_file(tmp_path / "inf.gguf", [], [("w", (32,), 8, 0)], block)
    with GGUFReader(path) as src:  # warnings are errors in the tests
        out = src.read("w")
    assert out[0] == np.inf and np.isnan(out[1])
