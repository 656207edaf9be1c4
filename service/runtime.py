"""What the lifespan makes, typed, in one place on ``app.state.runtime``.

The heavy objects exist only once the model has loaded; before that (or after a failed load)
``app.state.runtime`` is None, and the one ready dependency answers 503.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.backend_choice import BackendChoice
from model.encoder import Encoder
from service.batcher import Batcher
from service.cache import Cache
from service.collections import Collections
from service.embedding import Embedder
from service.jobs.runner import JobRunner
from service.search import SearchService


@dataclass(frozen=True)
class Runtime:
    encoder: Encoder
    backend_choice: BackendChoice
    batcher: Batcher
    cache: Cache
    embedder: Embedder
    collections: Collections
    jobs: JobRunner
    searches: SearchService
