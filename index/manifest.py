"""What names a collection and what it was made with: its manifest, and the errors about it.

Apart from ``index.collection`` so that listing, identity checks and the manifest's own damage
can be handled without opening a store or an index.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from uuid import uuid4

from pydantic import BaseModel, Field, ValidationError

from core.errors import Conflict, InputError, NotFound
from index.passages import PassageOptions
from index.retrieval import MODES, Mode

MANIFEST = "manifest.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" allows a final \n


class CollectionManifest(BaseModel):
    """What a collection was made with; ``count``/``version`` are as of the last checkpoint."""

    format_version: int = 1
    name: str
    model_id: str
    dim: int
    metric: str = "inner_product"
    index_factory: str = Field(description="'auto' or the FAISS factory string inside IDMap2")
    created: str
    nprobe: int = Field(default=32, ge=1, description="IVF lists probed per query")
    ef_search: int = Field(default=128, ge=1, description="HNSW candidate list size per query")
    count: int = 0
    version: int = 0
    uuid: str | None = Field(default=None, description="Unique per creation, never reused by a name")
    passages: PassageOptions | None = Field(
        default=None, description="How documents are cut into passages; None: one vector per document"
    )
    lexical: bool = Field(default=False, description="Keeps a lexical (BM25) index of its passages")

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The search modes it can serve: a collection made before passages serves dense only."""
        return MODES if self.lexical else ("dense",)

    @property
    def identity(self) -> str:
        """What caches and read handles key on: never repeated by a collection re-created under the
        same name (versions start again at 0). Collections made before uuids: name and creation time."""
        if self.uuid is not None:
            return self.uuid
        return hashlib.sha256(f"{self.name}\0{self.created}".encode()).hexdigest()[:32]


class UnknownCollection(NotFound):
    """No collection of that name (a service answers 404)."""


class CollectionExists(Conflict):
    """Creating a collection under a name already taken (409)."""


class ModeUnavailable(Conflict):
    """A search mode the collection cannot serve (409): one made before lexical indexes."""


class ModelMismatch(Conflict):
    """The collection's vectors come from another model than the caller's (409): never mix them."""


def check_name(name: str, param: str | None = None) -> str:
    """``name`` if it can name a collection; ``param`` is the request field it came in, if any."""
    if not NAME_RE.fullmatch(name):
        raise InputError(
            f"invalid collection name {name!r}: 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            param,
        )
    return name


class DamagedCollection(InputError):
    """A collection whose files cannot be read as one (503, naming it): the rest keep serving."""

    status = 503

    def __init__(self, name: str, what: str) -> None:
        super().__init__(
            f"collection {name!r} is damaged: {what}; restore it from a snapshot or delete it "
            "(docs/operations.md, backup and restore)"
        )
        self.name = name
        self.what = what


def read_manifest(root: Path, name: str) -> CollectionManifest:
    """The manifest of the collection in ``root``; DamagedCollection if it cannot be read as one."""
    try:
        return CollectionManifest.model_validate_json((root / MANIFEST).read_bytes())
    except (ValidationError, ValueError, UnicodeDecodeError):
        raise DamagedCollection(name, "its manifest is unreadable") from None


def collection_identity(home_dir: Path, name: str) -> str | None:
    """The identity of the collection now under ``name`` (None: there is none)."""
    path = Path(home_dir) / check_name(name) / MANIFEST
    try:
        return CollectionManifest.model_validate_json(path.read_text(encoding="utf-8")).identity
    except (OSError, ValueError):
        return None


def list_collections(home_dir: Path) -> list[str]:
    root = Path(home_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())


def drop_collection(home_dir: Path, name: str) -> None:
    """Remove a collection: renamed first (an open sees it gone at once, and a crash half-way
    never leaves half a collection under the name; the next start removes the rest), then its
    files. Raises UnknownCollection."""
    path = Path(home_dir) / check_name(name)
    if not (path / MANIFEST).is_file():
        raise UnknownCollection(f"unknown collection {name!r}")
    doomed = path.with_name(f".deleted-{name}-{uuid4().hex}")
    try:
        path.rename(doomed)
    except FileNotFoundError:  # dropped by a concurrent request (or process) first
        raise UnknownCollection(f"unknown collection {name!r}") from None
    shutil.rmtree(doomed, ignore_errors=True)
