"""PyTorch checkpoints read without torch and without running the pickle: values, laziness, hostile files."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modeltrace.errors import FormatError, UnsafeFileError
from modeltrace.formats import detect_format, open_file
from modeltrace.formats.torch_pickle import TorchReader, sniff

torch = pytest.importorskip("torch")


def _state_dict() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    return {
        "linear.weight": torch.randn(3, 5, generator=g),
        "linear.bias": torch.randn(3, generator=g),
        "emb.weight": torch.randn(7, 4, generator=g).to(torch.bfloat16),
        "half": torch.randn(2, 3, generator=g).to(torch.float16),
        "double": torch.randn(4, generator=g).to(torch.float64),
        "transposed": torch.randn(4, 6, generator=g).t(),  # non-contiguous: stride (1, 6)
        "view_with_offset": base[2:5, 1:3],  # shares a storage; offset 9, stride (4, 1)
        "base": base,
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "bn.num_batches_tracked": torch.tensor(17),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def _numpy(t: object) -> np.ndarray:
    return t.detach().float().numpy()  # type: ignore[attr-defined, no-any-return]


def test_sniff() -> None:
    assert sniff(b"PK\x03\x04rest")
    assert sniff(b"\x80\x02\x8a\n")
    assert not sniff(b"GGUF\x03\x00")
    assert not sniff(b"\x80")


def test_zip_checkpoint_values_shapes_and_counts(tmp_path: Path) -> None:
    sd = _state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    with open_file(path) as src:
        assert isinstance(src, TorchReader)
        infos = src.infos()
        assert list(infos) == list(sd)
        assert infos["emb.weight"].dtype == "BF16"
        assert infos["half"].dtype == "F16"
        assert infos["double"].dtype == "F64"
        assert infos["bn.num_batches_tracked"].dtype == "I64"
        assert infos["bn.num_batches_tracked"].shape == ()
        assert infos["mask"].dtype == "BOOL"
        assert infos["transposed"].shape == (6, 4)
        assert infos["transposed"].extra["stride"] == (1, 6)
        assert infos["view_with_offset"].extra["offset"] == 9
        assert sum(i.numel for i in infos.values()) == 15 + 3 + 28 + 6 + 4 + 24 + 6 + 24 + 4 + 1 + 3 + 0
        assert src._mm is None  # listing touched no storage bytes
        for name, tensor in sd.items():
            got = src.read(name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, _numpy(tensor), err_msg=name)
        np.testing.assert_array_equal(src.read_rows("transposed", 2, 5), _numpy(sd["transposed"])[2:5])
        np.testing.assert_array_equal(src.read_rows("emb.weight", 1, 3), _numpy(sd["emb.weight"])[1:3])
        assert src.metadata()["container"] == "zip"


def test_legacy_checkpoint_reads_the_same(tmp_path: Path) -> None:
    sd = _state_dict()
    path = tmp_path / "old.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch"
    with open_file(path) as src:
        assert src.metadata()["container"] == "legacy"
        assert list(src.infos()) == list(sd)
        for name, tensor in sd.items():
            np.testing.assert_array_equal(src.read(name), _numpy(tensor), err_msg=name)


def test_wrapped_state_dict_is_unwrapped_and_optimizer_left_out(tmp_path: Path) -> None:
    sd = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}
    ckpt = {"epoch": 3, "state_dict": sd, "optimizer": {"state": {0: {"exp_avg": torch.ones(2, 3)}}}}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    with TorchReader(path) as src:
        assert list(src.infos()) == ["fc.weight", "fc.bias"]
        assert sum(i.numel for i in src.infos().values()) == 8
        meta = src.metadata()
        assert meta["wrapper"] == "state_dict"
        assert meta["top_level_keys"] == ["epoch", "state_dict", "optimizer"]
        assert meta["scalars"] == {"epoch": 3}


def test_nested_dicts_flatten_with_dotted_names(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    torch.save({"model": {"encoder": {"w": torch.ones(2)}, "decoder": {"w": torch.full((3,), 2.0)}}}, path)
    with TorchReader(path) as src:
        assert list(src.infos()) == ["encoder.w", "decoder.w"]
        assert src.metadata()["wrapper"] == "model"
        np.testing.assert_array_equal(src.read("decoder.w"), np.full(3, 2.0, np.float32))


def test_compressed_members_and_a_bare_tensor(tmp_path: Path) -> None:
    sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(), "b": torch.ones(2, dtype=torch.bfloat16)}
    stored = tmp_path / "stored.pt"
    torch.save(sd, stored)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(stored) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item))
    with open_file(deflated) as src:
        for name, tensor in sd.items():
            np.testing.assert_array_equal(src.read(name), _numpy(tensor))
        np.testing.assert_array_equal(src.read_rows("w", 1, 3), _numpy(sd["w"])[1:3])
    bare = tmp_path / "bare.pt"
    torch.save(torch.full((2, 2), 5.0), bare)
    with open_file(bare) as src:
        assert list(src.infos()) == ["tensor"]
        np.testing.assert_array_equal(src.read("tensor"), np.full((2, 2), 5.0, np.float32))


def test_reader_does_not_need_torch(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    torch.save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t()}, path)
    code = ("import sys; from modeltrace.formats import open_file; s = open_file(sys.argv[1]); "
            "print(s.read('w').tolist()); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]"


# ---------------------------------------------------------------------------- bad input


def _rewrite_zip(src: Path, dst: Path, drop: str | None = None,
                 replace: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if drop is not None and item.filename.endswith(drop):
                continue
            data = zin.read(item)
            for suffix, new in (replace or {}).items():
                if item.filename.endswith(suffix):
                    data = new
            zout.writestr(item.filename, data)


def test_truncated_zip(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(100)}, good)
    bad = tmp_path / "cut.bin"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value).startswith(f"{bad}: not a readable zip archive (")
    assert err.value.path == str(bad)


def test_missing_storage(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(4)}, good)
    bad = tmp_path / "nostorage.bin"
    _rewrite_zip(good, bad, drop="/data/0")
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value) == (f"{bad}: storage '0' named by data.pkl is missing from the archive "
                              "(expected member good/data/0)")


def test_short_storage(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(4)}, good)
    bad = tmp_path / "short.bin"
    _rewrite_zip(good, bad, replace={"/data/0": b"\x00" * 8})
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value) == f"{bad}: storage '0' holds 8 bytes but 16 are needed; truncated?"


def test_corrupt_pickle(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(4)}, good)
    bad = tmp_path / "corrupt.bin"
    _rewrite_zip(good, bad, replace={"/data.pkl": b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\xff\xff"})
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert str(err.value).startswith(f"{bad}: corrupt pickle (")


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == f"{path}: zip archive has no data.pkl; not a PyTorch checkpoint"


def test_bare_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FormatError) as err:
        open_file(path)
    assert str(err.value) == f"{path}: a bare pickle, not a PyTorch checkpoint (magic number missing)"


class _Exec:
    """Pickles as a call of builtins.exec(code): what a hostile checkpoint carries."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import builtins

        return (builtins.exec, (self.code,))


class _System:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (self.cmd,))


def _hostile_checkpoint(tmp_path: Path, payload: object, name: str) -> Path:
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(4)}, good)
    pkl = pickle.dumps({"w_payload": payload}, protocol=4)
    bad = tmp_path / name
    _rewrite_zip(good, bad, replace={"/data.pkl": pkl})
    return bad


def test_malicious_exec_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned_exec"
    payload = _Exec(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')")
    bad = _hostile_checkpoint(tmp_path, payload, "evil.bin")
    # The payload is live: a plain unpickler would run it.
    with zipfile.ZipFile(bad) as zf:
        raw = zf.read("good/data.pkl")
    pickle.loads(raw)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeFileError) as err:
        open_file(bad)
    assert str(err.value) == (f"{bad}: pickle refers to builtins.exec, which is not on the allow-list of "
                              "tensor-rebuilding names; refused without running it")
    assert not marker.exists()


def test_malicious_os_system_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned_system"
    bad = _hostile_checkpoint(tmp_path, _System(f"touch {marker}"), "evil2.pt")
    with pytest.raises(UnsafeFileError) as err:
        TorchReader(bad)
    assert "pickle refers to posix.system, which is not on the allow-list" in str(err.value)
    assert err.value.path == str(bad)
    assert not marker.exists()


def test_malicious_legacy_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned_legacy"
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"little_endian": True}, buf, protocol=2)
    payload = _Exec(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')")
    pickle.dump({"w": payload}, buf, protocol=2)
    path = tmp_path / "legacy_evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeFileError):
        open_file(path)
    assert not marker.exists()


def test_pickle_cannot_set_attributes_on_allowed_names(tmp_path: Path) -> None:
    from modeltrace.formats import torch_pickle

    # GLOBAL torch.Size; state (None, {"__defaults__": (1,)}); BUILD: setattr on the stand-in.
    pkl = b"\x80\x02ctorch\nSize\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b."
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(1)}, good)
    bad = tmp_path / "build.bin"
    _rewrite_zip(good, bad, replace={"/data.pkl": pkl})
    with pytest.raises(FormatError) as err:
        open_file(bad)
    # BUILD is refused on anything but a state dict, before the stand-in's own guard is reached
    assert str(err.value) == f"{bad}: pickle is not a tensor checkpoint: BUILD on a _Stub: only OrderedDict state is accepted"
    assert torch_pickle._size.__defaults__ is None


def test_unsupported_torch_tensor_kinds_are_named(tmp_path: Path) -> None:
    pkl = b"\x80\x02ctorch._utils\n_rebuild_qtensor\nq\x00."
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(1)}, good)
    bad = tmp_path / "q.bin"
    _rewrite_zip(good, bad, replace={"/data.pkl": pkl})
    with pytest.raises(FormatError) as err:
        open_file(bad)
    assert not isinstance(err.value, UnsafeFileError)
    assert str(err.value) == (f"{bad}: tensors rebuilt by torch._utils._rebuild_qtensor (quantized, sparse or "
                              "subclass tensors) are not supported; nothing was run")


def test_control_characters_in_refused_names_are_escaped(tmp_path: Path) -> None:
    pkl = b"\x80\x02c\x1b[31mevil\nrun\nq\x00."
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(1)}, good)
    bad = tmp_path / "ansi.bin"
    _rewrite_zip(good, bad, replace={"/data.pkl": pkl})
    with pytest.raises(UnsafeFileError) as err:
        open_file(bad)
    assert "\x1b" not in str(err.value)
    assert "\\x1b[31mevil.run" in str(err.value)


# ---------------------------------------------------------------------------- detection by content


def test_detect_format_by_content_not_extension(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    st = tmp_path / "pytorch_model.bin"
    save_file({"w": np.ones((2, 2), np.float32)}, str(st))
    assert detect_format(st) == "safetensors"
    pt = tmp_path / "weights.safetensors"
    torch.save({"w": torch.ones(2)}, pt)
    assert detect_format(pt) == "torch"
    with open_file(pt) as src:
        assert src.format == "torch"


# ---------------------------------------------------------------------------- real models


@pytest.mark.parametrize(("model_id", "numel", "entries"), [
    ("efficientnet-lite0", 4_694_073, 296),
    ("efficientnet-lite1", 5_470_408, 386),
])
def test_real_efficientnet_checkpoints(realmodels: Path, model_id: str, numel: int, entries: int) -> None:
    files = sorted((realmodels / model_id).glob("*.pth"))
    if not files:
        pytest.skip(f"{model_id} absent from {realmodels}")
    with open_file(files[0]) as src:
        infos = src.infos()
        assert len(infos) == entries
        assert sum(i.numel for i in infos.values()) == numel
        floating = sum(i.numel for i in infos.values() if i.dtype == "F32")
        assert floating == {"efficientnet-lite0": 4_694_024, "efficientnet-lite1": 5_470_344}[model_id]
        name = max(infos, key=lambda n: infos[n].numel)
        expected = torch.load(files[0], weights_only=True)[name].float().numpy()
        np.testing.assert_array_equal(src.read(name), expected)
