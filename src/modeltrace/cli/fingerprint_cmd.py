"""`modeltrace fingerprint REF -o FILE`: a compact fingerprint that `compare` and `index` accept in place of a model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modeltrace.index.fingerprint import compute, describe, save
from modeltrace.model import Model
from modeltrace.textsafe import escape


@click.command("fingerprint")
@click.argument("ref", metavar="REF")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the fingerprint file.")
@click.option("--no-file-hashes", is_flag=True, help="Skip the sha256 of every weight file (faster on slow disks).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def fingerprint(ref: str, output: Path, no_file_hashes: bool, as_json: bool) -> None:
    """Fingerprint a model (folder, weight file or hf:org/name) in one streaming pass."""
    with Model.open(ref) as model:
        fp = compute(model, hash_files=not no_file_hashes)
    saved = save(fp, output)
    info = {**describe(saved), "output": str(output), "seconds": round(fp.stats["seconds"], 3),
            "tensor_bytes_read_as_float32": fp.stats["tensor_bytes_read"], "weight_file_bytes": fp.stats["file_bytes"]}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{escape(output)}: {info['bytes']} bytes, {info['layers']} MLP layer(s), basis {info['basis']}, "
               f"{info['seconds']:.2f}s")
