"""Hostile PyTorch checkpoints built opcode by opcode: forged zip sizes, zip bombs, pickle cycles, DAGs and
bombs, unhashable keys. Each must give a FormatError (or a correct answer) in bounded time and memory."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from format_builders import (
    APPENDS,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    MARK,
    NONE,
    POP,
    REDUCE,
    SETITEMS,
    TUPLE1,
    Member,
    dict_of,
    get,
    glob,
    i,
    legacy_checkpoint,
    pickle_of,
    put,
    state_dict_pickle,
    tensor,
    torch_zip,
    u,
)

from modeltrace.errors import FormatError
from modeltrace.formats import open_file, safe_pickle
from modeltrace.formats import torch_pickle as tp


def _floats(n: int) -> bytes:
    return np.arange(n, dtype="<f4").tobytes()


def test_a_plain_byte_built_checkpoint_reads_back(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "ok.bin", state_dict_pickle({"w": tensor("0", 6, (2, 3))}), {"0": _floats(6)})
    with open_file(path) as src:
        assert src.infos()["w"].shape == (2, 3)
        np.testing.assert_array_equal(src.read("w"), np.arange(6, dtype=np.float32).reshape(2, 3))
        np.testing.assert_array_equal(src.read_rows("w", 1, 2), [[3, 4, 5]])


def test_member_that_inflates_to_less_than_its_entry_declares_is_refused(tmp_path: Path) -> None:
    # 64 bytes deflated, entry says 4096 (CRC right): a view over the 64 would read heap memory
    pkl = state_dict_pickle({"w": tensor("0", 1024, (32, 32))})
    path = torch_zip(tmp_path / "short.bin", pkl, {"0": Member(_floats(16), deflate=True, declare=4096)})
    with open_file(path) as src:
        with pytest.raises(FormatError) as err:
            src.read("w")
        assert str(err.value) == f"{path}: storage '0' inflates to 64 bytes but its zip entry declares 4096"
        with pytest.raises(FormatError):
            src.read_rows("w", 0, 1)


def test_member_declaring_256_mib_in_a_few_bytes_is_refused_at_open(tmp_path: Path) -> None:
    pkl = state_dict_pickle({"w": tensor("0", 64 << 20, (64 << 20,))})
    path = torch_zip(tmp_path / "huge.bin", pkl, {"0": Member(_floats(16), deflate=True, declare=256 << 20)})
    assert path.stat().st_size < 1000
    with pytest.raises(FormatError) as err:
        open_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: zip member archive/data/0 would inflate ")
    assert msg.endswith(f"bytes to {256 << 20}, more than 32 times its size; refused as a zip bomb")


def test_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    n = 4 << 20  # 16 MiB of zeros deflate to 16 KB
    pkl = state_dict_pickle({"w": tensor("0", n, (n,))})
    path = torch_zip(tmp_path / "bomb.bin", pkl, {"0": Member(bytes(4 * n), deflate=True)})
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as err:
            open_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "refused as a zip bomb" in str(err.value)
    assert peak < 4 << 20


def test_stored_member_whose_entry_overstates_its_size(tmp_path: Path) -> None:
    pkl = state_dict_pickle({"w": tensor("0", 1 << 20, (1 << 20,))})
    path = torch_zip(tmp_path / "stored.bin", pkl, {"0": Member(_floats(16), declare=4 << 20)})
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == (f"{path}: zip member archive/data/0 is stored uncompressed but declares "
                              f"{4 << 20} bytes in 64")


def test_data_pkl_that_inflates_past_its_entry(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "pkl.bin", state_dict_pickle({}), {})
    raw = bytearray(path.read_bytes())
    # shrink data.pkl's declared size in both headers: zipfile stops at the declared size, then the CRC fails
    from format_builders import _forge_size

    _forge_size(raw, b"archive/data.pkl", 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value).startswith(f"{path}: cannot read data.pkl (")


def test_zero_strides_cannot_claim_a_trillion_parameters(tmp_path: Path) -> None:
    pkl = state_dict_pickle({"w": tensor("0", 1, (10**6, 10**6), stride=(0, 0))})
    path = torch_zip(tmp_path / "tiny.bin", pkl, {"0": _floats(1)})
    assert path.stat().st_size < 600
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == (f"{path} [tensor w]: size (1000000, 1000000) has 1000000000000 elements but its "
                              "storage holds 1")


def test_storage_larger_than_the_file_in_a_legacy_checkpoint(tmp_path: Path) -> None:
    root = state_dict_pickle({"w": tensor("0", 10**12, (10**6, 10**6))})
    path = legacy_checkpoint(tmp_path / "legacy.bin", root, [("0", 10**12, _floats(4))])
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == (f"{path}: storage '0' of 1000000000000 elements runs past the end of the file; "
                              "truncated?")


# ---------------------------------------------------------------------------- the object tree


def _timed_open(path: Path, limit_s: float = 5.0) -> tp.TorchReader:
    t0 = time.perf_counter()
    src = open_file(path)
    assert time.perf_counter() - t0 < limit_s
    assert isinstance(src, tp.TorchReader)
    return src


def test_dict_that_contains_itself_does_not_loop(tmp_path: Path) -> None:
    # d = {"w": tensor}; d["self"] = d; d["state_dict"] = d
    body = (EMPTY_DICT + put(0) + MARK + u("w") + tensor("0", 4, (4,)) + u("self") + get(0)
            + u("state_dict") + get(0) + SETITEMS)
    path = torch_zip(tmp_path / "cycle.bin", pickle_of(body), {"0": _floats(4)})
    with _timed_open(path) as src:
        assert list(src.infos()) == ["w"]


def test_wrapper_that_wraps_itself_is_not_unwrapped_for_ever(tmp_path: Path) -> None:
    body = EMPTY_DICT + put(0) + MARK + u("state_dict") + get(0) + SETITEMS
    path = torch_zip(tmp_path / "wrap.bin", pickle_of(body), {})
    with _timed_open(path) as src:
        assert src.infos() == {}


def _dag(levels: int) -> bytes:
    """L0 = [w]; L(k+1) = [Lk, Lk], each kept in the memo: 2^levels paths through levels + 1 lists."""
    body = EMPTY_LIST + put(0) + MARK + tensor("0", 4, (4,)) + APPENDS + POP
    for k in range(1, levels + 1):
        body += EMPTY_LIST + put(k) + MARK + get(k - 1) + get(k - 1) + APPENDS + POP
    return body + get(levels)


def test_dag_of_shared_lists_is_walked_once_per_list(tmp_path: Path) -> None:
    # L0 = [w]; L(k+1) = [Lk, Lk]: 2^40 paths, 41 lists
    body = _dag(40)
    body = EMPTY_DICT + MARK + u("x") + body + SETITEMS
    path = torch_zip(tmp_path / "dag.bin", pickle_of(body), {"0": _floats(4)})
    with _timed_open(path) as src:
        assert src.infos() == {}  # the tensor sits deeper than MAX_FLATTEN_DEPTH: not searched


def test_shared_dag_under_the_depth_cap_names_each_tensor_once(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "dag.bin", pickle_of(dict_of([(u("x"), _dag(24))])), {"0": _floats(4)})
    with _timed_open(path) as src:
        assert list(src.infos()) == ["x" + ".0" * 25]


def test_huge_memo_index_does_not_allocate(tmp_path: Path) -> None:
    # the C unpickler sizes its memo array by the largest index: LONG_BINPUT 2^32-2 asks for 32 GB
    body = EMPTY_DICT + b"".join(put(2**32 - 2 - k) for k in range(1000))
    path = torch_zip(tmp_path / "memo.bin", pickle_of(body), {})
    tracemalloc.start()
    try:
        with _timed_open(path) as src:
            assert src.infos() == {}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_repeated_calls_on_one_shared_list_are_capped(tmp_path: Path) -> None:
    # P = [(0, None), (1, None), ...]; then OrderedDict(P) again and again: each call copies P
    n = 20_000
    pairs = EMPTY_LIST + put(0) + MARK + b"".join(b"M" + struct.pack("<H", k) + NONE + b"\x86" for k in range(n))
    body = pairs + APPENDS + EMPTY_LIST + MARK
    body += (glob("collections", "OrderedDict") + get(0) + TUPLE1 + REDUCE) * 400 + APPENDS
    path = torch_zip(tmp_path / "bomb.bin", pickle_of(dict_of([(u("x"), body)])), {})
    assert path.stat().st_size < 200_000
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value) == (f"{path}: pickle is not a tensor checkpoint: more than 4000000 elements passed "
                              "to calls")


def test_deeply_nested_tuple_as_a_dict_key(tmp_path: Path) -> None:
    # hashing a tuple nested millions deep overflows the C stack; 100k deep is refused the same way
    key = EMPTY_TUPLE + TUPLE1 * 100_000
    body = EMPTY_DICT + MARK + key + i(1) + SETITEMS
    path = torch_zip(tmp_path / "deep.bin", pickle_of(body), {})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value) == (f"{path}: pickle is not a tensor checkpoint: a dict key is a tuple of containers, "
                              "not a string or number")


def test_deeply_nested_tuple_key_in_an_ordered_dict_call(tmp_path: Path) -> None:
    key = EMPTY_TUPLE + TUPLE1 * 1000
    pair = MARK + key + NONE + b"t"
    body = glob("collections", "OrderedDict") + MARK + EMPTY_LIST + MARK + pair + APPENDS + b"t" + REDUCE
    path = torch_zip(tmp_path / "deep.bin", pickle_of(body), {})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value).endswith("an OrderedDict key is a tuple of containers, not a string or number")


def test_huge_integer_key_is_a_format_error(tmp_path: Path) -> None:
    body = dict_of([(i(7 ** 300_000), tensor("0", 4, (4,)))])
    path = torch_zip(tmp_path / "bigint.bin", pickle_of(body), {"0": _floats(4)})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value) == (f"{path}: pickle is not a tensor checkpoint: a dict key is an integer of "
                              f"{(7 ** 300_000).bit_length()} bits")


def test_tuple_key_in_the_weights_is_a_format_error(tmp_path: Path) -> None:
    body = dict_of([(i(1) + i(2) + b"\x86", tensor("0", 4, (4,)))])
    path = torch_zip(tmp_path / "tuplekey.bin", pickle_of(body), {"0": _floats(4)})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value) == (f"{path}: pickle is not a tensor checkpoint: a dict key is a tuple of 2 items, "
                              "not a string or number")


def test_overlong_names_are_refused(tmp_path: Path) -> None:
    body = dict_of([(u("k" * 5000), tensor("0", 4, (4,)))])
    body = dict_of([(u("a"), body)])
    path = torch_zip(tmp_path / "long.bin", pickle_of(body), {"0": _floats(4)})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value).endswith("a tensor name is longer than 4096 characters")


def test_build_cannot_change_a_shared_storage_type(tmp_path: Path) -> None:
    # BUILD on the FloatStorage stand-in would set its dtype for every later file in the process
    body = glob("torch", "FloatStorage") + NONE + EMPTY_DICT + MARK + u("dtype") + u("U8") + SETITEMS
    body += b"\x86b"
    path = torch_zip(tmp_path / "build.bin", pickle_of(body), {})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value).endswith("BUILD on a StorageType: only OrderedDict state is accepted")
    assert tp.ALLOWED_GLOBALS[("torch", "FloatStorage")].dtype == "F32"


def test_too_many_opcodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_OPS", 1000)
    body = EMPTY_LIST + MARK + NONE * 2000 + APPENDS
    path = torch_zip(tmp_path / "ops.bin", pickle_of(body), {})
    with pytest.raises(FormatError) as err:
        _timed_open(path)
    assert str(err.value) == f"{path}: pickle is not a tensor checkpoint: more than 1000 pickle operations"


def test_compressed_storage_rows_inflate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkl = state_dict_pickle({"w": tensor("0", 4096, (64, 64))})
    path = torch_zip(tmp_path / "deflated.bin", pkl, {"0": Member(_floats(4096), deflate=True)})
    calls = []
    real = zlib.decompressobj

    def counting(*args: object, **kw: object) -> object:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zlib, "decompressobj", counting)
    with open_file(path) as src:
        full = np.arange(4096, dtype=np.float32).reshape(64, 64)
        for r in range(0, 64, 8):
            np.testing.assert_array_equal(src.read_rows("w", r, r + 8), full[r:r + 8])
    assert len(calls) == 1


def test_member_declaring_gigabytes_beyond_what_tensors_need_is_not_inflated(tmp_path: Path) -> None:
    # 64 MiB of zeros deflate to 64 KB; the entry says 4 GB; the tensors need 16 bytes: only those are inflated
    pkl = state_dict_pickle({"w": tensor("0", 4, (4,))})
    path = torch_zip(tmp_path / "big.bin", pkl, {"0": Member(bytes(64 << 20), deflate=True, declare=2**32 - 1)})
    tracemalloc.start()
    try:
        with open_file(path) as src:
            np.testing.assert_array_equal(src.read("w"), np.zeros(4, np.float32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_empty_shape_beyond_numpy_is_a_format_error(tmp_path: Path) -> None:
    path = torch_zip(tmp_path / "empty.bin", state_dict_pickle({"w": tensor("0", 0, (2**62, 4, 0))}), {"0": b""})
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == f"{path} [tensor w]: shape [{2**62}, 4, 0] describes more than {2**40} elements"


def test_legacy_pickle_length_field_of_4_gb_reads_only_the_file(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "legacy.bin"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x02X\xff\xff\xff\xffabc")
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as err:
            open_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value).startswith(f"{path}: corrupt pickle (")
    assert peak < 8 << 20
