"""Fuzzing the weight readers: for any input, a reader either works or raises modeltrace's FormatError.

Structured strategies (hypothesis) build safetensors headers, pickles (zip and legacy containers, and
random opcode programs), GGUF headers and ONNX protos that are nearly valid, then break them; byte-level
mutations start from the committed corpus (tests/fuzz/corpus/formats/). Every example opens the file,
lists it, reads each tensor whole and by rows. Anything but success or FormatError fails the test, and
so does a breach of the time or memory bounds (address space capped at the process's size + 2 GiB).

The budget is fixed and deterministic (derandomized) in `make test`; MODELTRACE_FUZZ_EXAMPLES=<n> runs
n examples per target instead (see docs/fuzzing.md).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf  # noqa: F401  (imported here, not inside the first timed example)
import numpy as np
import onnx  # noqa: F401
import pytest
from format_builders import (
    APPENDS,
    EMPTY_DICT,
    EMPTY_LIST,
    EMPTY_TUPLE,
    FALSE,
    MARK,
    NONE,
    POP,
    REDUCE,
    SETITEMS,
    TUPLE,
    TUPLE1,
    Member,
    get,
    gguf_file,
    gguf_string,
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
from fuzzing import capped_address_space, fuzz_settings
from hypothesis import event, given
from hypothesis import strategies as st

from modeltrace.errors import FormatError
from modeltrace.formats import open_file

CORPUS = Path(__file__).parent / "corpus" / "formats"
MAX_EXAMPLE_SECONDS = 10.0  # CPU seconds for one input, opened and read in full; inputs here are under 64 KB


_settings = fuzz_settings


@pytest.fixture(scope="module", autouse=True)
def memory_cap() -> Iterator[None]:
    """Cap the address space while fuzzing: a reader that tries to allocate GBs fails with MemoryError."""
    with capped_address_space():
        yield
    shutil.rmtree(_WORK, ignore_errors=True)


_WORK = Path(tempfile.mkdtemp(prefix="modeltrace-fuzz-"))  # one folder per example inside; removed at the end


def _exercise(data: bytes, name: str = "model.bin", extra: dict[str, bytes] | None = None, *,
              record: bool = True) -> str:
    """Write `data`, open it with whatever reader its bytes call for, read everything; the outcome."""
    folder = Path(tempfile.mkdtemp(dir=_WORK))
    path = folder / name
    path.write_bytes(data)
    for rel, content in (extra or {}).items():
        (folder / rel).write_bytes(content)
    t0 = time.process_time()  # CPU time: a looping reader burns it; a loaded machine does not add to it
    try:
        with open_file(path) as src:
            infos = src.infos()
            src.metadata()
            for tname, info in list(infos.items())[:16]:
                full = src.read(tname)
                assert full.shape == info.shape and full.dtype == np.float32
                if info.shape:
                    np.testing.assert_array_equal(src.read_rows(tname, 1, 3), full[1:3])
        outcome = "ok"
    except FormatError as exc:
        assert str(exc).startswith(str(path)), str(exc)  # one line naming the file
        assert "\n" not in str(exc)
        outcome = "format-error"
    elapsed = time.process_time() - t0
    assert elapsed < MAX_EXAMPLE_SECONDS, f"{elapsed:.1f} CPU s for {len(data)} bytes"
    if record:
        event(outcome)  # --hypothesis-show-statistics: how many inputs opened, how many were refused
    return outcome


# ---------------------------------------------------------------------------- byte mutations of the corpus


def _corpus(suffix: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob(f"*{suffix}"))]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "u64"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "u64" and len(data) >= pos + 8:
            data[pos:pos + 8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2**31, 2**32, 2**63, 2**64 - 1])))
    return bytes(data)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".gguf", ".onnx"])
def test_corpus_files_work_or_fail_cleanly(suffix: str) -> None:
    files = sorted(CORPUS.glob(f"*{suffix}"))
    assert files, f"no {suffix} files in {CORPUS}"
    for p in files:
        _exercise(p.read_bytes(), p.name, record=False)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".gguf", ".onnx"])
def test_mutated_corpus_files(suffix: str) -> None:
    @_settings(60)
    @given(mutated(_corpus(suffix)))
    def run(data: bytes) -> None:
        _exercise(data, "model" + suffix)

    run()


# ---------------------------------------------------------------------------- safetensors headers

_ST_DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "F8_E5M2"]
_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I64": 8, "BOOL": 1, "F8_E4M3": 1,
          "F8_E5M2": 1}
_ODD_VALUES = st.one_of(st.booleans(), st.floats(allow_nan=False), st.integers(-3, 3),
                        st.integers(2**63, 2**65), st.none(), st.text(max_size=3),
                        st.builds(list), st.builds(dict))  # fresh containers: a shared one would be mutated


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 4))
    header: dict[str, object] = {}
    offset = 0
    for k in range(n):
        dtype = draw(st.sampled_from(_ST_DTYPES))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = int(np.prod(shape)) * _SIZES[dtype]
        header[draw(st.text(min_size=1, max_size=6)) + str(k)] = {"dtype": dtype, "shape": shape,
                                                                  "data_offsets": [offset, offset + size]}
        offset += size
    fill = draw(st.sampled_from([b"", b"\xff", b"\x7f\xef", b"\x00\x7c"]))  # NaNs, huge doubles, f16 inf
    data = bytearray((fill * offset)[:offset] if fill else draw(st.binary(min_size=offset, max_size=offset)))
    for _ in range(draw(st.integers(0, 3))):
        if not header:
            break
        name = draw(st.sampled_from(sorted(header)))
        entry = header[name]
        if not isinstance(entry, dict):
            continue
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "extra"]))
        if field == "entry":
            header[name] = draw(_ODD_VALUES)
        elif field == "extra":
            entry["x"] = draw(st.recursive(st.integers(), lambda c: st.lists(c, max_size=2), max_leaves=4))
        elif field == "shape" and isinstance(entry.get("shape"), list) and entry["shape"]:
            entry["shape"][draw(st.integers(0, len(entry["shape"]) - 1))] = draw(_ODD_VALUES)
        elif field == "data_offsets" and isinstance(entry.get("data_offsets"), list):
            entry["data_offsets"][draw(st.integers(0, 1))] = draw(st.one_of(_ODD_VALUES, st.integers(0, offset + 8)))
        else:
            entry[field] = draw(st.one_of(_ODD_VALUES, st.sampled_from(["F7", "Q4_K", "C64", "F8_E8M0"])))
    meta = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
                          _ODD_VALUES))
    if meta is not None:
        header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    if draw(st.booleans()) and header:  # duplicate a key in the JSON text
        first = next(iter(header))
        raw = raw[:-1] + b", " + json.dumps({first: header[first]}).encode()[1:]
    tail = draw(st.sampled_from([b"", b"\x00" * 4]))
    length = draw(st.sampled_from([len(raw), len(raw), len(raw) + 1, max(0, len(raw) - 1), 2**40]))
    return struct.pack("<Q", length) + raw + bytes(data) + tail


@_settings(150)
@given(safetensors_files())
def test_safetensors_headers(data: bytes) -> None:
    _exercise(data, "model.safetensors")


# ---------------------------------------------------------------------------- pickles


_STYPES = ["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "ByteStorage", "BoolStorage"]
_ITEM = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "ByteStorage": 1,
         "BoolStorage": 1}


@st.composite
def state_dicts(draw: st.DrawFn) -> tuple[bytes, dict[str, Member], list[tuple[str, int, bytes]]]:
    """A state dict pickle with storages: shapes, strides, offsets and sizes drawn near the valid ones."""
    tensors: dict[str, bytes] = {}
    members: dict[str, Member] = {}
    legacy: list[tuple[str, int, bytes]] = []
    for k in range(draw(st.integers(0, 4))):
        stype = draw(st.sampled_from(_STYPES))
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        numel = int(np.prod(shape)) if shape else 1
        declared = max(0, numel + draw(st.sampled_from([0, 0, 0, -1, 1, 10**12])))
        stride = None
        if draw(st.integers(0, 3)) == 0:
            stride = tuple(draw(st.lists(st.integers(0, 8), min_size=len(shape), max_size=len(shape) + 1)))
        offset = draw(st.sampled_from([0, 0, 1, -1, 2**40]))
        key = str(draw(st.sampled_from([k, 0])))
        tensors[f"t{k}"] = tensor(key, declared, shape, stride, offset, stype)
        nbytes = max(0, min(declared, 64) * _ITEM[stype] + draw(st.sampled_from([0, 0, -1, 3])))
        raw = draw(st.binary(min_size=nbytes, max_size=nbytes))
        members[key] = Member(raw, deflate=draw(st.booleans()),
                              declare=draw(st.sampled_from([None, None, 0, 4096, 2**31])))
        legacy.append((key, declared, raw))
    return state_dict_pickle(tensors), members, legacy


_TOKENS = [EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, SETITEMS, APPENDS, TUPLE, TUPLE1, REDUCE, NONE, FALSE, POP,
           b"b", b"2", b"s", b"a", b"\x86", b"\x87", b"Q", b"\x94", b"\x8f", b"\x91", b"(\x91", b"d", b"l",
           glob("collections", "OrderedDict"), glob("torch", "Size"), glob("torch", "FloatStorage"),
           glob("torch._utils", "_rebuild_tensor_v2"), glob("torch._utils", "_rebuild_parameter"),
           glob("torch", "bfloat16"), glob("numpy", "dtype"), glob("torch", "device"), glob("os", "system"),
           glob("torch._tensor", "_rebuild_from_type_v2"), glob("numpy.core.multiarray", "scalar"),
           u("storage"), u("cpu"), u("0"), u("state_dict"), u("f4")]


@st.composite
def pickle_programs(draw: st.DrawFn) -> bytes:
    """A random program of pickle opcodes over the allow-listed names: mostly corrupt, sometimes deep."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 40))):
        choice = draw(st.integers(0, 9))
        if choice < 6:
            parts.append(draw(st.sampled_from(_TOKENS)))
        elif choice == 6:
            parts.append(i(draw(st.one_of(st.integers(-5, 300), st.integers(2**62, 2**70)))))
        elif choice == 7:
            parts.append(put(draw(st.integers(0, 5))) if draw(st.booleans()) else get(draw(st.integers(0, 5))))
        elif choice == 8:
            parts.append(tensor("0", draw(st.integers(0, 8)), tuple(draw(st.lists(st.integers(0, 3), max_size=2)))))
        else:
            parts.append(draw(st.sampled_from([TUPLE1, b"\x85" * 50, MARK * 20, EMPTY_LIST + put(0) + get(0)])))
    return pickle_of(b"".join(parts))


@_settings(120)
@given(state_dicts(), st.booleans())
def test_torch_state_dicts(parts: tuple[bytes, dict[str, Member], list[tuple[str, int, bytes]]],
                           legacy: bool) -> None:
    pkl, members, storages = parts
    if legacy:
        with tempfile.TemporaryDirectory(dir=_WORK) as d:
            data = legacy_checkpoint(Path(d) / "x.bin", pkl, storages).read_bytes()
    else:
        with tempfile.TemporaryDirectory(dir=_WORK) as d:
            data = torch_zip(Path(d) / "x.bin", pkl, dict(members)).read_bytes()
    _exercise(data, "pytorch_model.bin")


@_settings(200)
@given(pickle_programs(), st.booleans())
def test_pickle_programs(pkl: bytes, legacy: bool) -> None:
    with tempfile.TemporaryDirectory(dir=_WORK) as d:
        if legacy:
            data = legacy_checkpoint(Path(d) / "x.bin", pkl, []).read_bytes()
        else:
            data = torch_zip(Path(d) / "x.bin", pkl, {"0": bytes(32)}).read_bytes()
    _exercise(data, "pytorch_model.bin")


# ---------------------------------------------------------------------------- GGUF headers

# (type code, encoder of a drawn value)
_GGUF_QTYPES = [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 24, 25, 26, 27, 28, 30, 99]


@st.composite
def gguf_values(draw: st.DrawFn, depth: int = 0) -> tuple[int, bytes]:
    vtype = draw(st.sampled_from([0, 1, 4, 5, 6, 7, 8, 9, 10, 12] + ([13] if depth == 0 else [])))
    if vtype == 8:
        return vtype, gguf_string(draw(st.text(max_size=6)))
    if vtype == 9:
        if depth >= 5:
            return 4, struct.pack("<I", 1)
        itype = draw(st.sampled_from([0, 4, 6, 8, 9]))
        count = draw(st.integers(0, 4))
        items = b""
        for _ in range(count):
            if itype == 8:
                items += gguf_string(draw(st.text(max_size=3)))
            elif itype == 9:
                items += struct.pack("<IQ", 4, 1) + struct.pack("<I", 7)
            else:
                items += bytes({0: 1, 4: 4, 6: 4}[itype])
        claimed = draw(st.sampled_from([count, count, count + 1, 2**62]))
        return vtype, struct.pack("<IQ", itype, claimed) + items
    sizes = {0: 1, 1: 1, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 12: 8, 13: 0}
    return vtype, draw(st.binary(min_size=sizes[vtype], max_size=sizes[vtype]))


_GGUF_KEYS = ["general.architecture", "general.alignment", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.scores", "tokenizer.ggml.bos_token_id", "tokenizer.chat_template", "x"]


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    kvs = []
    for _ in range(draw(st.integers(0, 4))):
        vtype, value = draw(gguf_values())
        kvs.append(gguf_string(draw(st.sampled_from(_GGUF_KEYS))) + struct.pack("<I", vtype) + value)
    tensors = []
    offset = 0
    for k in range(draw(st.integers(0, 4))):
        qtype = draw(st.sampled_from(_GGUF_QTYPES))
        dims = tuple(draw(st.lists(st.sampled_from([1, 2, 32, 256, 0, 2**40]), min_size=1, max_size=3)))
        tensors.append((f"t{k}", dims, qtype, draw(st.sampled_from([offset, 0, offset + 1, 2**63]))))
        offset += 1024
    data = draw(st.binary(max_size=4096))
    return gguf_file(_WORK / "g.gguf", kvs, tensors, data, alignment=32,
                     version=draw(st.sampled_from([3, 3, 2, 1]))).read_bytes()


@_settings(150)
@given(gguf_files())
def test_gguf_headers(data: bytes) -> None:
    _exercise(data, "model.gguf")


# ---------------------------------------------------------------------------- ONNX protos

_ONNX_OPS = ["MatMul", "Gemm", "DequantizeLinear", "Cast", "Mul", "Sub", "Add", "Gather", "MatMulInteger",
             "QLinearMatMul", "Constant", "If"]


@st.composite
def onnx_models(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes]]:
    from onnx import AttributeProto, TensorProto, helper

    inits = []
    extra: dict[str, bytes] = {}
    names = []
    for k in range(draw(st.integers(0, 4))):
        code = draw(st.sampled_from([1, 1, 2, 3, 6, 7, 10, 11, 16, 17, 21, 14, 8, 99]))
        dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 10**6]), max_size=3))
        name = draw(st.sampled_from([f"w{k}", f"onnx::MatMul_{k}", f"l{k}.weight", f"w{k}_quantized"]))
        t = TensorProto(name=name, data_type=code, dims=dims)
        how = draw(st.sampled_from(["raw", "raw", "typed", "external", "none"]))
        n = int(np.prod(dims)) if dims and max(dims) < 10**6 else 4
        if how == "raw":
            t.raw_data = draw(st.binary(min_size=0, max_size=4 * n + 4))
        elif how == "typed":
            t.float_data.extend(draw(st.lists(st.floats(width=32), max_size=n + 1)))
            t.int32_data.extend(draw(st.lists(st.integers(-128, 255), max_size=2)))
        elif how == "external":
            t.data_location = TensorProto.EXTERNAL
            loc = draw(st.sampled_from(["w.data", "../w.data", "/etc/hostname", "a\x00b", "", "sub/../w.data"]))
            for key, value in (("location", loc), ("offset", draw(st.sampled_from(["0", "4", "-1", "x"]))),
                               ("length", draw(st.sampled_from([str(4 * n), "0", "99999"])))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            extra["w.data"] = draw(st.binary(max_size=64))
        inits.append(t)
        names.append(name)
    nodes = []
    for k in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(_ONNX_OPS))
        ins = draw(st.lists(st.sampled_from([*names, "x", ""]), max_size=3)) if names else ["x"]
        node = helper.make_node(op, ins, [f"y{k}"], name=draw(st.sampled_from(["", "/l0/MatMul", "/a/b/c"])))
        if draw(st.booleans()):
            node.attribute.append(helper.make_attribute("axis", draw(st.integers(-3, 3))))
        if draw(st.booleans()):
            node.attribute.append(helper.make_attribute("block_size", draw(st.sampled_from([0, 1, 2, -1, 2**40]))))
        if op == "Constant" and inits and draw(st.booleans()):
            node.attribute.append(helper.make_attribute("value", inits[0]))
        if op == "If":
            sub = helper.make_graph([], "sub", [], [], initializer=inits[:1])
            attr = node.attribute.add()
            attr.name, attr.type = "then_branch", AttributeProto.GRAPH
            attr.g.CopyFrom(sub)
        nodes.append(node)
    graph = helper.make_graph(nodes, "g", [], [], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), extra


@_settings(150)
@given(onnx_models())
def test_onnx_protos(parts: tuple[bytes, dict[str, bytes]]) -> None:
    data, extra = parts
    _exercise(data, "model.onnx", extra)


# ---------------------------------------------------------------------------- the corpus itself


def _build_corpus(write: Callable[[str, bytes], None]) -> None:
    """The seed files: small valid files of every format and the hostile inputs of the regression tests."""
    from st_builders import write_safetensors

    from modeltrace.formats.gguf_write import write_gguf
    from modeltrace.formats.onnx_write import write_onnx

    rng = np.random.default_rng(0)
    w = {"model.embed_tokens.weight": rng.standard_normal((8, 32), dtype=np.float32),
         "model.layers.0.mlp.up_proj.weight": rng.standard_normal((16, 32), dtype=np.float32),
         "model.norm.weight": rng.standard_normal(32, dtype=np.float32)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write("valid.safetensors", write_safetensors(tmp / "a", w).read_bytes())
        write("valid-q8.gguf", write_gguf(tmp / "b", w, "Q8_0").read_bytes())
        write("valid-f16.gguf", write_gguf(tmp / "c", w, "F16").read_bytes())
        write("valid.onnx", write_onnx(tmp / "d.onnx", w).read_bytes())
        write("valid-int8.onnx", write_onnx(tmp / "e.onnx", w, quantize="int8").read_bytes())
        pkl = state_dict_pickle({"a": tensor("0", 6, (2, 3)), "b": tensor("0", 6, (3,), offset=3)})
        write("valid-zip.bin", torch_zip(tmp / "f", pkl, {"0": bytes(24)}).read_bytes())
        write("valid-legacy.bin", legacy_checkpoint(tmp / "g", pkl, [("0", 6, bytes(24))]).read_bytes())
        write("short-member.bin", torch_zip(tmp / "h", state_dict_pickle({"w": tensor("0", 1024, (32, 32))}),
                                            {"0": Member(bytes(64), deflate=True, declare=4096)}).read_bytes())
        write("zero-stride.bin", torch_zip(tmp / "i", state_dict_pickle(
            {"w": tensor("0", 1, (10**6, 10**6), stride=(0, 0))}), {"0": bytes(4)}).read_bytes())
        cycle = EMPTY_DICT + put(0) + MARK + u("w") + tensor("0", 4, (4,)) + u("self") + get(0) + SETITEMS
        write("cycle.bin", torch_zip(tmp / "j", pickle_of(cycle), {"0": bytes(16)}).read_bytes())


def test_corpus_is_what_the_builders_make() -> None:
    """The committed corpus is regenerated by _build_corpus (run this file with MODELTRACE_FUZZ_WRITE_CORPUS=1)."""
    made: dict[str, bytes] = {}
    _build_corpus(made.__setitem__)
    if os.environ.get("MODELTRACE_FUZZ_WRITE_CORPUS"):
        CORPUS.mkdir(parents=True, exist_ok=True)
        for name, data in made.items():
            (CORPUS / name).write_bytes(data)
    for name in made:
        assert (CORPUS / name).is_file(), f"corpus file {name} missing: regenerate the corpus"
