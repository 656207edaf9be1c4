"""``dapsearch index snapshot|restore``: back up a collection to one archive, bring one back.

The same archives as the admin API's (index.snapshot), taken and restored in this process, with
the progress on stderr. Safe beside a running server: a snapshot reads one committed version while
it writes, and a restore becomes visible only once it is complete and checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import ModelDirOpt, bar, load_settings, model_dir_or_default
from index.manifest import read_manifest as read_collection_manifest
from index.restore import inspect_snapshot, restore_snapshot
from index.snapshot import take_snapshot
from model.artifact import MANIFEST, read_manifest


def _model_sha256(model_dir: Path, model_id: str) -> str | None:
    """The whole sha256 of the model's weights, where the model of that id is installed here."""
    if not (model_dir / MANIFEST).is_file():
        return None
    manifest = read_manifest(model_dir)
    return manifest.weights_sha256 if manifest.id == model_id else None


def snapshot_cmd(
    name: Annotated[str, typer.Argument(help="Collection.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the archive; default <home>/snapshots/<name>.")
    ] = None,
    model_dir: ModelDirOpt = None,
) -> None:
    """Write a snapshot archive of a collection at its committed version (a server may be writing)."""
    settings = load_settings()
    manifest = read_collection_manifest(settings.collections_dir / name, name)
    sha = _model_sha256(model_dir_or_default(model_dir), manifest.model_id)
    with bar(f"snapshot {name}", unit="B", unit_scale=True) as progress:
        path, header = take_snapshot(
            settings.collections_dir, name, out or settings.snapshots_dir / name, sha, progress.update
        )
    typer.echo(
        f"{path}  (version {header.version}, {header.documents} documents, {header.passages} passages)"
    )


def restore_cmd(
    archive: Annotated[
        Path, typer.Argument(help="A snapshot archive (.snapshot.tar).", exists=True, dir_okay=False)
    ],
    name: Annotated[str, typer.Option("--name", help="The collection to restore it as.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a collection of that name.")
    ] = False,
    model_dir: ModelDirOpt = None,
) -> None:
    """Restore a snapshot archive as a collection, after checking every member's sha256 and that
    its vectors are of this model; nothing is visible until it is complete and checked."""
    settings = load_settings()
    directory = model_dir_or_default(model_dir)
    manifest = read_manifest(directory)
    size = archive.stat().st_size
    with bar("check", total=size, unit="B", unit_scale=True) as progress:
        header = inspect_snapshot(archive, manifest.id, manifest.weights_sha256, progress.update)
    with bar(f"restore {name}", total=size, unit="B", unit_scale=True) as progress:
        stats = restore_snapshot(
            archive, settings.collections_dir, name, manifest.id, overwrite, progress.update
        )
    typer.echo(
        f"restored {header.collection!r} as {name!r}: version {stats['version']}, "
        f"{stats['count']} documents, {stats['passages']} passages"
    )
