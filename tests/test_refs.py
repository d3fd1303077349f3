"""Model references: local paths and hf:org/name@rev resolved offline in a hub cache folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from st_builders import llama_folder, llama_params

from modeltrace.errors import ResolveError, UnsafeFileError
from modeltrace.inspect import inspect_model
from modeltrace.model import Model
from modeltrace.refs import HubRef, parse_hub_ref, resolve, resolve_in_cache

SHA = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"


def hub_cache(cache: Path, repo: str, folder: Path, sha: str = SHA, refs: dict[str, str] | None = None) -> Path:
    """Lay out `folder`'s files as huggingface_hub does: blobs by content hash, snapshot links, refs."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    blobs = repo_dir / "blobs"
    snap = repo_dir / "snapshots" / sha
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(f.relative_to(folder).parts) + 1)) / "blobs" / blob.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for name, value in (refs or {"main": sha}).items():
        (repo_dir / "refs" / name).write_text(value)
    return snap


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    c = tmp_path / "hub"
    c.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    return c


def test_parse_hub_refs() -> None:
    assert parse_hub_ref("hf:org/name") == HubRef("org/name", "main")
    assert parse_hub_ref("hf:org/name@v1.0") == HubRef("org/name", "v1.0")
    assert parse_hub_ref(f"hf:org/name@{SHA}") == HubRef("org/name", SHA)
    assert parse_hub_ref("./org/name") is None
    with pytest.raises(ResolveError) as err:
        parse_hub_ref("hf:org/name@@x")
    assert str(err.value) == "hf:org/name@@x: not a valid hub reference"
    assert err.value.hint == "write hf:org/name or hf:org/name@revision"


@pytest.mark.parametrize("shards", [1, 2])
def test_resolves_main_branch_and_sha_in_cache(tmp_path: Path, cache: Path, shards: int) -> None:
    src = llama_folder(tmp_path / "src", np.random.default_rng(0), shards=shards)
    snap = hub_cache(cache, "org/tiny-llama", src, refs={"main": SHA + "\n", "v1": SHA})
    assert (snap / "config.json").is_symlink()
    assert resolve("hf:org/tiny-llama") == snap
    assert resolve("hf:org/tiny-llama@v1") == snap
    assert resolve(f"hf:org/tiny-llama@{SHA}") == snap
    with Model.open("hf:org/tiny-llama@main") as model:
        assert model.root == snap
        assert model.config is not None and model.config["model_type"] == "llama"
        report = inspect_model(model)
    assert report.parameters == llama_params()
    assert report.ref == "hf:org/tiny-llama@main"
    assert report.tokenizer is not None and report.tokenizer["vocab_size"] == 32


def test_revision_picks_its_snapshot(tmp_path: Path, cache: Path) -> None:
    src = llama_folder(tmp_path / "src", np.random.default_rng(0))
    hub_cache(cache, "org/m", src, sha=SHA, refs={"main": SHA})
    old = hub_cache(cache, "org/m", src, sha=OLD, refs={"old": OLD})
    assert resolve("hf:org/m@old") == old
    assert resolve_in_cache(HubRef("org/m", "main"), cache).name == SHA  # type: ignore[union-attr]


def test_missing_ref_gives_resolve_error_with_hint(cache: Path) -> None:
    with pytest.raises(ResolveError) as err:
        resolve("hf:org/absent")
    assert str(err.value) == f"hf:org/absent: not in the local hub cache ({cache})"
    assert err.value.hint == "pass --download to fetch it, or set HF_HUB_CACHE"
    assert err.value.ref == "hf:org/absent"


def test_missing_revision_of_a_cached_repo(tmp_path: Path, cache: Path) -> None:
    hub_cache(cache, "org/m", llama_folder(tmp_path / "src", np.random.default_rng(0)))
    with pytest.raises(ResolveError) as err:
        resolve("hf:org/m@dev")
    assert str(err.value) == f"hf:org/m@dev: not in the local hub cache ({cache})"


def test_ref_file_without_a_sha(tmp_path: Path, cache: Path) -> None:
    hub_cache(cache, "org/m", llama_folder(tmp_path / "src", np.random.default_rng(0)), refs={"main": "garbage"})
    with pytest.raises(ResolveError) as err:
        resolve("hf:org/m")
    ref_file = cache / "models--org--m" / "refs" / "main"
    assert str(err.value) == f"hf:org/m@main: cache ref file {ref_file} does not hold a commit sha"


def test_local_paths(tmp_path: Path) -> None:
    assert resolve(str(tmp_path)) == tmp_path
    with pytest.raises(ResolveError) as err:
        resolve(str(tmp_path / "absent"))
    assert str(err.value) == f"{tmp_path / 'absent'}: no such file or folder"


# ---------------------------------------------------------------------------- nothing read outside the model


@pytest.mark.parametrize("ref", ["hf:org/m@../../x", "hf:org/m@refs/../../../x", "hf:org/..@main",
                                 "hf:org/m@a//b", "hf:org/m@./main"])
def test_revisions_that_climb_out_are_refused_without_looking(tmp_path: Path, cache: Path, ref: str) -> None:
    hub_cache(cache, "org/m", llama_folder(tmp_path / "src", np.random.default_rng(0)))
    (cache / "x").write_text(SHA)  # a target that exists must get the same answer as one that does not
    with pytest.raises(ResolveError) as err:
        resolve(ref)
    assert str(err.value) == f"{ref}: not a valid hub reference"


def test_snapshot_file_linking_outside_its_repository_is_refused(tmp_path: Path, cache: Path) -> None:
    snap = hub_cache(cache, "org/m", llama_folder(tmp_path / "src", np.random.default_rng(0)))
    secret = tmp_path / "secret.txt"
    secret.write_text("[PAD]\n[UNK]\n")
    (snap / "vocab.txt").symlink_to(secret)
    with pytest.raises(UnsafeFileError) as err:
        Model.open("hf:org/m")
    assert str(err.value) == f"{snap / 'vocab.txt'}: file links outside the model folder; refused, nothing read from it"


def test_snapshot_folder_linked_outside_its_repository_is_not_resolved(tmp_path: Path, cache: Path) -> None:
    elsewhere = llama_folder(tmp_path / "elsewhere", np.random.default_rng(0))
    repo = cache / "models--org--m"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    (repo / "snapshots" / SHA).symlink_to(elsewhere)
    with pytest.raises(ResolveError) as err:
        resolve("hf:org/m")
    assert str(err.value) == f"hf:org/m: not in the local hub cache ({cache})"


@pytest.mark.parametrize("name", ["config.json", "vocab.txt", "modeling_evil.py", "model.safetensors"])
def test_local_folder_file_linking_outside_is_refused(tmp_path: Path, name: str) -> None:
    model = llama_folder(tmp_path / "m", np.random.default_rng(0))
    outside = tmp_path / f"outside-{name}"
    target = model / name
    if target.exists():
        target.rename(outside)
    else:
        outside.write_text("x = 1\n")
    target.symlink_to(outside)
    with pytest.raises(UnsafeFileError) as err:
        Model.open(str(model))
    assert str(err.value) == f"{target}: file links outside the model folder; refused, nothing read from it"
    assert err.value.path == str(target)


def test_links_within_the_folder_are_followed(tmp_path: Path) -> None:
    model = llama_folder(tmp_path / "m", np.random.default_rng(0))
    (model / "weights").mkdir()
    (model / "model.safetensors").rename(model / "weights" / "model.safetensors")
    (model / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    with Model.open(str(model)) as m:
        assert m.source.infos()


def test_shard_reached_through_a_linked_folder_is_refused(tmp_path: Path) -> None:
    model = llama_folder(tmp_path / "m", np.random.default_rng(0), shards=2)
    away = tmp_path / "away"
    away.mkdir()
    shard = "model-00002-of-00002.safetensors"
    (model / shard).rename(away / shard)
    (model / "sub").symlink_to(away)  # a linked folder: not listed, but an index can name a file in it
    index = model / "model.safetensors.index.json"
    index.write_text(index.read_text().replace(shard, f"sub/{shard}"))
    with pytest.raises(UnsafeFileError) as err:
        Model.open(str(model))
    assert str(err.value) == f"{index}: shard path 'sub/{shard}' links outside the model folder"


def test_a_single_weight_file_named_directly_may_be_a_link(tmp_path: Path) -> None:
    model = llama_folder(tmp_path / "m", np.random.default_rng(0))
    link = tmp_path / "elsewhere" / "w.safetensors"
    link.parent.mkdir()
    link.symlink_to(model / "model.safetensors")
    with Model.open(str(link)) as m:  # the user named this file: following it reads nothing unasked for
        assert m.source.infos()
