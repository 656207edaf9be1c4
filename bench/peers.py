"""The peer engines dapsearch is measured against, each in its own virtualenv under a cache folder.

A peer never goes into the project's venv: its pins (torch, transformers, optimum) conflict with
ours and with each other (sentence-transformers' onnx and openvino extras cannot share one venv).
Every venv gets torch 2.13.0 first, the CPU build the machines carry, then the peer with torch
pinned, so that no install pulls a multi-GB CUDA build.

    python bench/peers.py install st-onnx        # then: bench/embed.py --engines onnx-int8,st-onnx-int8
    python bench/peers.py list

``bench/embed.py`` runs a peer engine's worker with that venv's interpreter; a peer that is not
installed is a row that says so, never a silent gap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH = "torch==2.13.0"
# venv name -> what pip installs into it (after torch), as docs/peer notes found to resolve here.
PEERS: dict[str, list[str]] = {
    "st-onnx": ["sentence-transformers[onnx]==5.7.0"],
    "st-openvino": ["sentence-transformers[openvino]==6.3.0", "datasets", "huggingface-hub>=1.5,<1.22"],
    "infinity": ["infinity-emb[server,torch,optimum]==0.0.78"],
}
# What a venv must not keep: PyPI's torchvision, pulled in by optimum-intel, is built against
# another torch and breaks `from transformers import PreTrainedModel` with the CPU build.
REMOVE: dict[str, list[str]] = {"st-openvino": ["torchvision"]}
# bench/embed.py engine -> the venv it runs in.
ENGINE_VENVS: dict[str, str] = {
    "st-onnx": "st-onnx",
    "st-onnx-int8": "st-onnx",
    "st-openvino": "st-openvino",
    "st-openvino-int8": "st-openvino",
}


def cache_dir() -> Path:
    """``DAPSEARCH_PEERS_DIR``, else ~/.cache/dapsearch-peers: outside the repository, kept between runs."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dapsearch-peers"
    return Path(os.environ.get("DAPSEARCH_PEERS_DIR", default))


def venv_python(name: str) -> Path:
    return cache_dir() / name / "bin" / "python"


def installed(name: str) -> bool:
    return (cache_dir() / name / ".installed").is_file()


def install(name: str) -> Path:
    """Create the venv ``name`` and install its peer; idempotent (a finished install is kept)."""
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    home = cache_dir() / name
    if installed(name):
        return venv_python(name)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    pip = [str(venv_python(name)), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    subprocess.run([*pip, TORCH], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
        pins.write(TORCH + "\n")
    try:
        subprocess.run([*pip, "-c", pins.name, *PEERS[name]], check=True)
    finally:
        Path(pins.name).unlink(missing_ok=True)
    if REMOVE.get(name):
        subprocess.run(
            [str(venv_python(name)), "-m", "pip", "uninstall", "-y", "-q", *REMOVE[name]], check=True
        )
    (home / ".installed").write_text(" ".join(PEERS[name]) + "\n", encoding="utf-8")
    return venv_python(name)


PEER_DISTS = ("sentence-transformers", "optimum-onnx", "onnxruntime", "infinity-emb", "openvino")


def versions(name: str, dists: tuple[str, ...] = PEER_DISTS) -> str:
    """What a peer venv runs, for the benchmark's header."""
    if not installed(name):
        return f"{name}: not installed"
    code = (
        "import importlib.metadata as m\n"
        f"for d in {dists!r}:\n"
        "    try: print(d, m.version(d))\n"
        "    except m.PackageNotFoundError: pass"
    )
    out = subprocess.run([str(venv_python(name)), "-c", code], capture_output=True, text=True, check=False)
    return f"{name}: " + ", ".join(out.stdout.split("\n")[:-1])


_OWN_SUFFIXES = (".onnx", ".xml", ".bin", ".data")
_REWRITTEN = ("manifest.json", "modules.json", "sentence_bert_config.json")


def peer_model_copy(model_dir: Path, variant: str = "") -> Path:
    """A copy of the model's files in the peer cache: peers write their own exports (``onnx/``)
    and configuration beside the weights (sentence-transformers' ``save_pretrained`` rewrites
    every file it finds), and must never write into a served model's folder: a copy, not links.
    ``variant`` names a separate copy, for a peer that must not see the others' exports."""
    model_dir = Path(model_dir).resolve()
    out = cache_dir() / "models" / (model_dir.name + (f"-{variant}" if variant else ""))
    out.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.suffix in _OWN_SUFFIXES or item.name in _REWRITTEN:
            continue  # dapsearch's own graphs and records, and what _classic_sentence_transformers writes
        target = out / item.name
        if target.is_symlink():
            target.unlink()
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        elif not _same_file(item, target):
            shutil.copy2(item, target)  # keeps the mtime, so an unchanged file is copied once
    _classic_sentence_transformers(model_dir, out)
    return out


def _same_file(source: Path, copy: Path) -> bool:
    """Size and mtime agree: a rebuilt model (same name, same sizes, new weights) is copied again."""
    if not copy.exists():
        return False
    a, b = source.stat(), copy.stat()
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _classic_sentence_transformers(model_dir: Path, out: Path) -> None:
    """The sentence-transformers files in the layout every release reads (module paths such as
    ``sentence_transformers.models.Pooling``, the old configuration keys): infinity pins 3.4,
    which cannot import the newer paths nor take the newer keys a current release writes."""
    modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[1]
    dim = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True},
    }
    for name, value in files.items():
        target = out / name
        target.unlink(missing_ok=True)
        target.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# Run in the infinity venv: the standard unpooled export (``last_hidden_state``) its optimum engine
# needs, and optimum's dynamic int8 of it under the one name infinity prefers on CPU.
_INFINITY_ONNX_EXPORT = """
import sys
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
folder, config = sys.argv[1], sys.argv[2]
ORTModelForFeatureExtraction.from_pretrained(folder, export=True).save_pretrained(folder)
quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
options = {"per_channel": False} if config != "avx2" else {}
qconfig = getattr(AutoQuantizationConfig, config)(is_static=False, **options)
quantizer.quantize(save_dir=folder, quantization_config=qconfig)
"""


def infinity_onnx_copy(model_dir: Path, config: str) -> Path:
    """A model copy for infinity's ONNX engine: ``model.onnx`` plus ``model_quantized.onnx``
    (optimum's dynamic int8 for ``config``: avx2, avx512 or avx512_vnni), made once."""
    out = peer_model_copy(model_dir, "infinity-onnx")
    if not (out / "model_quantized.onnx").is_file():
        code = [str(venv_python("infinity")), "-c", _INFINITY_ONNX_EXPORT, str(out), config]
        subprocess.run(code, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return out


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("install", help="create a peer's venv and install it")
    add.add_argument("names", nargs="+", choices=sorted(PEERS))
    sub.add_parser("list", help="the peers and whether each is installed")
    args = parser.parse_args(argv)
    if args.command == "install":
        for name in args.names:
            print(f"{name}: {install(name)}")
    else:
        for name, spec in PEERS.items():
            state = "installed" if installed(name) else "not installed"
            print(f"{name:12s} {state:14s} {' '.join(spec)}  ({cache_dir() / name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
