"""The DAP training job: translation ranking + representation translation learning on parallel data.

One loop for a single CPU process and for ``torchrun --nproc-per-node N`` (gloo on CPU, nccl on
GPU): every rank reads the same deterministic stream and takes its slice of each global batch,
the TR loss all-gathers embeddings with gradient so negatives are global, and gradients are
averaged across ranks before each step. Everything needed to continue exactly (weights,
optimiser, schedule, step, RNG states, stream position) is checkpointed atomically; Ctrl-C saves
and exits. The best model by dev P@1 is written as a complete built model directory that
``dapsearch model export`` and the service can use directly.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.errors import InputError
from core.files import atomic_write_text
from model.artifact import read_manifest
from model.torch_model import load_transformer
from model.train.budget import PROBE_STEPS, Budget, scaled_warmup
from model.train.checkpoint import replace_dir, rng_state, set_rng_state, write_best
from model.train.config import (
    DEV_FOLDERS,
    Interrupted,
    Precision,
    RunResult,
    StepStats,
    TrainConfig,
    cpu_has_native_bf16,
    distillation_loss,
)
from model.train.corpus import Pair, read_dev
from model.train.dap_model import DapModel, Tokenizer, dev_accuracy, freeze, set_dropout
from model.train.distributed import average_gradients, choose_device, init_distributed, rank_and_size
from model.train.locked import batch_shape, locked_loss, pseudo_paragraphs
from model.train.losses import translation_ranking_loss
from model.train.mixture import MixtureStream, find_corpora
from model.train.rtl import EnglishVocab, RTLHead, rtl_labels, run_english_vocab
from model.train.summary import describe_run


class Trainer:
    def __init__(
        self, cfg: TrainConfig, progress: Callable[[int, dict[str, float]], None] | None = None
    ) -> None:
        self._born = time.perf_counter()
        self.cfg = cfg
        self.progress = progress
        # With a time budget the last step (and the warm-up's length) are fitted as the run goes.
        self.planned, self.warmup, self.elapsed_before = cfg.steps, cfg.warmup, 0.0
        self.budget = (
            Budget(cfg.time_budget * 60, cfg.steps, cfg.eval_every, cfg.save_every)
            if cfg.time_budget is not None
            else None
        )
        self.device = choose_device(cfg.device)
        self.distributed = init_distributed(self.device)
        self.rank, self.world = rank_and_size()
        if cfg.batch_size % self.world:
            raise InputError(f"--batch-size {cfg.batch_size} must be divisible by the {self.world} processes")
        if self.device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.manifest = read_manifest(cfg.model_dir)
        self.tokenizer = Tokenizer(cfg.model_dir, self.manifest, cfg.max_length)
        self.corpora = find_corpora(cfg.data, cfg.langs)
        self.langs = sorted(self.corpora)
        self.dev_dirs = self._dev_dirs()
        self.dev: dict[str, dict[str, list[Pair]]] = {}
        exclude: list[tuple[str, str]] = []
        for dev_dir in self.dev_dirs:
            dev_langs = [lang for lang in self.langs if (dev_dir / f"{lang}-en.tsv").is_file()]
            if dev_langs and cfg.select:
                self.dev[dev_dir.name] = read_dev(dev_dir, dev_langs, cfg.eval_pairs)
            # Every dev pair stays out of training, not only the ones evaluated, and so does every
            # pair sharing a side with one: n-way sources (xCOPA, xSID) pair one English sentence
            # with many languages, so a dev pair's English side recurs in other languages' files.
            exclude += [(p.src, p.en) for pairs in read_dev(dev_dir).values() for p in pairs]
        self.stream = MixtureStream(
            self.corpora,
            self.tokenizer.pair_filter(),
            cfg.seed,
            alpha=cfg.lang_alpha,
            source_weights=cfg.source_weights,
            batch_languages=cfg.batch_languages,
            exclude=exclude,
            exclude_sides=[side for pair in exclude for side in pair],
        )
        self.bf16 = self._bf16(cfg.precision)
        self._seed_everything(cfg.seed)
        encoder = load_transformer(cfg.model_dir)
        encoder.train()
        freeze(encoder, cfg)
        if cfg.dropout is not None:
            set_dropout(encoder, cfg.dropout)
        rtl = None
        if cfg.rtl:
            self.vocab = self._english_vocab()
            ids = torch.as_tensor(self.vocab.ids, dtype=torch.long)
            rtl = RTLHead(encoder, ids, cfg.rtl_layers, self.tokenizer.mask_id)  # type: ignore[arg-type]
            rtl.requires_grad_(True)  # the head always trains, whatever was frozen in the encoder
            for module in rtl.modules():  # ...except its copy of the (huge) word-embedding table
                if isinstance(module, nn.Embedding) and module.num_embeddings > 10_000:
                    module.weight.requires_grad_(False)
        if rtl is not None and cfg.dropout is not None:
            set_dropout(rtl, cfg.dropout)
        self.model = DapModel(encoder, self.manifest.pooling, rtl).to(self.device)
        self.teacher: DapModel | None = None
        if cfg.distill_weight > 0 or cfg.objective == "locked":
            teacher = load_transformer(cfg.model_dir)
            teacher.requires_grad_(False)
            self.teacher = DapModel(teacher, self.manifest.pooling, None).to(self.device).eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule)
        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None

    # ------------------------------------------------------------------ setup

    def _dev_dirs(self) -> list[Path]:
        if self.cfg.dev is not None:
            for d in self.cfg.dev:
                if not d.is_dir():
                    raise InputError(f"dev directory {d} does not exist")
            return list(self.cfg.dev)
        return [d / name for d in self.cfg.data for name in DEV_FOLDERS if (d / name).is_dir()]

    def _bf16(self, precision: Precision) -> bool:
        if precision == "fp32":
            return False
        native = bool(torch.cuda.is_bf16_supported()) if self.device.type == "cuda" else cpu_has_native_bf16()
        if precision == "bf16" and not native:
            raise InputError(
                f"--precision bf16 needs native bf16 (AMX or AVX512-BF16 on CPU); this {self.device.type} "
                "has none, use --precision auto or fp32"
            )
        return native

    def describe(self) -> list[str]:
        """What the run trains on and selects by, printed at start-up."""
        return describe_run(
            self.cfg, self.corpora, self.stream.shares, self.dev, self.dev_dirs, self.bf16, self.device
        )

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _schedule(self, step: int) -> float:
        """Linear warm-up, then linear decay to zero at the last step."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        remaining = self.planned - step
        return max(0.0, remaining / max(1, self.planned - self.warmup))

    @functools.cached_property
    def paragraph_tokenizer(self) -> Tokenizer:
        """Pseudo-paragraphs' longer tokenizer, the locked objective's alone: built on first use."""
        return Tokenizer(self.cfg.model_dir, self.manifest, self.cfg.max_length * self.cfg.paragraph_pairs)

    def _english_vocab(self) -> EnglishVocab:
        """English-side token ids of the training files, computed once and cached in the run dir."""
        return run_english_vocab(
            self.cfg.out / "en_vocab.txt",
            self.corpora,
            lambda batch: self.tokenizer.encode_batch(batch, self.cfg.en_kind),
            self.tokenizer.specials,
            write=self.rank == 0,
        )

    # ------------------------------------------------------------------ one step

    def train_step(self, batch: list[Pair]) -> StepStats:
        loss, stats = self._locked(batch) if self.cfg.objective == "locked" else self._dap(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        average_gradients(self.params)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        stats.loss = float(loss.detach())
        return stats

    def _dap(self, batch: list[Pair]) -> tuple[torch.Tensor, StepStats]:
        """Translation ranking (+ RTL, + distillation to the base), ``query:`` on the X side."""
        cfg = self.cfg
        src_ids, src_mask = self.tokenizer.encode([p.src for p in batch], self.device)
        en_ids, en_mask = self.tokenizer.encode([p.en for p in batch], self.device, cfg.en_kind)
        with self._autocast():
            src_emb, src_states = self.model.embed(src_ids, src_mask)
            en_emb, _ = self.model.embed(en_ids, en_mask)
        tr = translation_ranking_loss(
            src_emb.float(), en_emb.float(), cfg.temperature, cfg.tr_direction, cfg.margin
        )
        loss, stats = tr, StepStats(0.0, float(tr.detach()), 0.0)
        loss = loss + self._rtl(src_states, src_mask, en_ids, en_mask, stats)
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                src_base, _ = self.teacher.embed(src_ids, src_mask)
                en_base, _ = self.teacher.embed(en_ids, en_mask)
            distill = distillation_loss(
                torch.cat([src_emb, en_emb]).float(), torch.cat([src_base, en_base]).float()
            )
            loss = loss + cfg.distill_weight * distill
            stats.distill = float(distill.detach())
        return loss, stats

    def _locked(self, batch: list[Pair]) -> tuple[torch.Tensor, StepStats]:
        """The locked English tower (``model/train/locked.py``), + RTL on sentence batches only."""
        cfg = self.cfg
        shape = batch_shape(cfg.seed, self.step, cfg.passage_share, cfg.paragraph_share)
        tokenizer = self.tokenizer
        if shape.paragraphs:
            batch, tokenizer = pseudo_paragraphs(batch, cfg.paragraph_pairs), self.paragraph_tokenizer
        src_ids, src_mask = tokenizer.encode([p.src for p in batch], self.device, shape.kind)
        en_ids, en_mask = tokenizer.encode([p.en for p in batch], self.device, shape.kind)
        assert self.teacher is not None
        with self._autocast():
            src_emb, src_states = self.model.embed(src_ids, src_mask)
            en_emb, _ = self.model.embed(en_ids, en_mask)
            with torch.no_grad():
                target, _ = self.teacher.embed(en_ids, en_mask)
        parts = locked_loss(
            src_emb.float(), en_emb.float(), target.float(), cfg.temperature, cfg.ranking_weight
        )
        stats = StepStats(0.0, parts.ranking, 0.0, english=parts.english, transfer=parts.transfer)
        rtl = 0.0 if shape.paragraphs else self._rtl(src_states, src_mask, en_ids, en_mask, stats)
        return parts.total + rtl, stats

    def _rtl(
        self,
        src_states: torch.Tensor,
        src_mask: torch.Tensor,
        en_ids: torch.Tensor,
        en_mask: torch.Tensor,
        stats: StepStats,
    ) -> torch.Tensor | float:
        """The weighted RTL loss (0 without the head), its value recorded in ``stats``."""
        if self.model.rtl is None or self.cfg.rtl_weight <= 0:
            return 0.0
        labels = rtl_labels(en_ids, en_mask, self.vocab.to_compact)
        with self._autocast():
            rtl: torch.Tensor = self.model.rtl(src_states, src_mask, en_ids, en_mask, labels).float()
        stats.rtl = float(rtl.detach())
        return self.cfg.rtl_weight * rtl

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ------------------------------------------------------------------ checkpoints

    def elapsed(self) -> float:
        """Wall time of the run so far, over every (re)start up to now."""
        return self.elapsed_before + time.perf_counter() - self._born

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        started = time.perf_counter()
        out = self.cfg.out
        staging = out / "checkpoint.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "rng": rng_state(),
                "stream": self.stream.state_dict(),
                "best_score": self.best_score,
                "best_step": self.best_step,
                "planned": self.planned,
                "warmup": self.warmup,
                "elapsed": self.elapsed(),
            },
            staging / "state.pt",
        )
        with open(staging / "state.pt", "rb") as fh:
            os.fsync(fh.fileno())
        replace_dir(staging, out / "checkpoint")
        if self.budget is not None:
            self.budget.save_s = time.perf_counter() - started

    def load_checkpoint(self) -> None:
        state = torch.load(
            self.cfg.out / "checkpoint" / "state.pt", map_location=self.device, weights_only=False
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.best_score = state["best_score"]
        self.best_step = state["best_step"]
        self.planned = int(state.get("planned", self.cfg.steps))
        self.warmup = int(state.get("warmup", self.cfg.warmup))
        self.elapsed_before = float(state.get("elapsed", 0.0))
        set_rng_state(state["rng"])

    def save_best(self) -> None:
        """The encoder alone (no RTL head) as a complete built model directory: out/best."""
        if self.rank == 0:
            write_best(
                self.model.encoder, self.cfg, self.manifest, self.step, self.best_score, self.elapsed()
            )

    # ------------------------------------------------------------------ the loop

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.cfg.out / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict[str, Any] | None:
        """Dev P@1 on every dev set; the selection score is their mean (each set's own mean first,
        so a set with more languages does not outweigh the other)."""
        if not self.dev:
            return None
        started = time.perf_counter()
        sets = {
            name: dev_accuracy(self.model, self.tokenizer, dev, self.device) for name, dev in self.dev.items()
        }
        first = next(iter(sets.values()))
        result: dict[str, Any] = {
            "avg": float(np.mean([r["avg"] for r in sets.values()])),
            # The first set's numbers also at the top, as in runs with one dev set.
            **{k: first[k] for k in ("xx2en", "en2xx", "per_lang")},
            "sets": sets,
        }
        self._log({"step": self.step, "event": "eval", **result})
        if self.budget is not None:
            self.budget.eval_s = time.perf_counter() - started
        if self.best_score is None or result["avg"] > self.best_score:
            self.best_score, self.best_step = result["avg"], self.step
            self.save_best()
            if self.distributed:
                dist.barrier()
        return result

    def run(self, resume: bool = False) -> RunResult:
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_checkpoint()
        elif self.rank == 0:
            atomic_write_text(cfg.out / "config.json", cfg.model_dump_json(indent=2) + "\n")
            if (cfg.out / "log.jsonl").exists():
                (cfg.out / "log.jsonl").unlink()
        history: list[dict[str, Any]] = []
        if self.step == 0:
            first = self.evaluate()
            if first is not None:
                history.append({"step": 0, **first})
        batches = self.stream.batches(cfg.batch_size, self.rank, self.world)
        started, pairs_done, since_start = time.perf_counter(), 0, 0
        try:
            while self.step < self.planned:
                step_started = time.perf_counter()
                batch = next(batches)
                stats = self.train_step(batch)
                self.step += 1
                since_start += 1
                pairs_done += cfg.batch_size
                if self.budget is not None:
                    self.budget.record_step(time.perf_counter() - step_started)
                record: dict[str, float] = {
                    "step": self.step,
                    "loss": stats.loss,
                    "tr": stats.tr,
                    "rtl": stats.rtl,
                    "distill": stats.distill,
                    "english": stats.english,
                    "transfer": stats.transfer,
                    "lr": float(self.scheduler.get_last_lr()[0]),
                    "pairs_per_s": pairs_done / max(time.perf_counter() - started, 1e-9),
                    "planned": self.planned,
                }
                if not math.isfinite(stats.loss):
                    raise RuntimeError(f"loss became {stats.loss} at step {self.step}; lower --lr")
                if self.progress is not None:
                    self.progress(self.step, record)
                if self.step % cfg.log_every == 0:
                    self._log({"event": "train", **record})
                history.append(record)
                last = self.step >= self.planned
                if self.step % cfg.eval_every == 0 or last:
                    result = self.evaluate()
                    if result is not None:
                        history.append({"step": self.step, "eval": result["avg"]})
                if self.step % cfg.save_every == 0 or last:
                    self.save_checkpoint()
                if not last and (since_start == PROBE_STEPS or self.step % cfg.eval_every == 0):
                    self._fit_to_budget()
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise Interrupted(
                f"interrupted at step {self.step}; checkpoint saved, resume with --resume"
            ) from None
        if not self.dev:
            self.save_best()  # nothing to select by: the final model is the run's model
            if self.distributed:
                dist.barrier()
        return RunResult(self.step, self.best_score, self.best_step, history, self.elapsed())

    def _fit_to_budget(self) -> None:
        """Set the last step from the measured step, evaluation and save times (rank 0 decides)."""
        if self.budget is None:
            return
        planned = self.budget.fit(self.step, self.elapsed())
        warmup = self.warmup
        if self.step < self.warmup:  # still warming up: keep the warm-up's share of the run
            warmup = scaled_warmup(self.cfg.warmup, self.cfg.steps, planned)
        if self.distributed:
            agreed = torch.tensor([planned, warmup], dtype=torch.long, device=self.device)
            dist.broadcast(agreed, 0)
            planned, warmup = (int(v) for v in agreed.tolist())
        if (planned, warmup) != (self.planned, self.warmup):
            self._log(
                {
                    "step": self.step,
                    "event": "plan",
                    "planned": planned,
                    "warmup": warmup,
                    "elapsed_s": self.elapsed(),
                    "step_s": float(np.median(list(self.budget.step_times))),
                    "eval_s": self.budget.eval_s,
                }
            )
        self.planned, self.warmup = planned, warmup
