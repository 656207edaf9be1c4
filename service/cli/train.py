"""``dapsearch train`` (DAP fine-tuning) and ``dapsearch eval`` (models side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from model.errors import InputError
from service.cli.common import ModelDirOpt, app, bar, model_dir_or_default, parse_backend

LangsOpt = Annotated[
    str | None, typer.Option("--langs", help="Comma-separated language codes [default: every file found].")
]


def _langs(value: str | None) -> list[str] | None:
    if value is None:
        return None
    langs = [v.strip() for v in value.split(",") if v.strip()]
    if not langs:
        raise InputError("--langs is empty")
    return langs


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Directory of xx-en.tsv[.gz] parallel files.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoint/, best/, log.jsonl).")],
    langs: LangsOpt = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch of pairs (in-batch negatives).")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 5e-5,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warm-up steps, then linear decay.")] = 100,
    temperature: Annotated[float, typer.Option(min=1e-4, help="InfoNCE temperature.")] = 0.05,
    tr_direction: Annotated[str, typer.Option(help="both | xx2en (the paper) | en2xx.")] = "both",
    rtl_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the RTL loss.")] = 0.1,
    rtl_layers: Annotated[int, typer.Option(min=1, help="Transformer layers in the RTL head.")] = 2,
    no_rtl: Annotated[bool, typer.Option("--no-rtl", help="Translation ranking only (ablation).")] = False,
    max_length: Annotated[int, typer.Option(min=4, help="Tokens per sentence in training.")] = 32,
    train_embeddings: Annotated[
        bool, typer.Option("--train-embeddings", help="Also train the word embeddings (frozen by default).")
    ] = False,
    train_layers: Annotated[
        int | None, typer.Option(min=1, help="Train only the top N transformer layers (faster on CPU).")
    ] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="Dev evaluation interval (steps).")] = 100,
    eval_pairs: Annotated[int, typer.Option(min=2, help="Dev pairs per language.")] = 200,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint interval (steps).")] = 100,
    dev: Annotated[Path | None, typer.Option(help="Dev pairs directory [default: DATA/dev].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data order, dropout and initialisation.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    name: Annotated[str | None, typer.Option(help="Name of the trained model [default: <base>-dap].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly.")] = False,
    model_dir: ModelDirOpt = None,
) -> None:
    """Fine-tune an encoder with DAP (translation ranking + representation translation learning).

    Runs the same under `torchrun --nproc-per-node N` (gloo on CPU, nccl on GPU). The best model
    by dev P@1 is written to OUT/best as a built model directory (export it with `dapsearch model
    export --model-dir OUT/best`).
    """
    from model.train.loop import Interrupted, TrainConfig, Trainer, distributed_cleanup

    if not data.is_dir():
        raise InputError(f"data directory not found: {data}")
    if tr_direction not in ("both", "xx2en", "en2xx"):
        raise InputError("--tr-direction must be both, xx2en or en2xx")
    if (out / "checkpoint").exists() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (out / "checkpoint" / "state.pt").is_file():
        raise InputError(f"nothing to resume in {out} (no checkpoint/state.pt)")
    cfg = TrainConfig(
        data=data,
        out=out,
        model_dir=model_dir_or_default(model_dir),
        dev=dev,
        langs=_langs(langs),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        temperature=temperature,
        tr_direction=tr_direction,
        rtl=not no_rtl,
        rtl_weight=rtl_weight,
        rtl_layers=rtl_layers,
        max_length=max_length,
        freeze_embeddings=not train_embeddings,
        train_layers=train_layers,
        eval_every=eval_every,
        eval_pairs=eval_pairs,
        save_every=save_every,
        seed=seed,
        device=device,
        name=name,
    )
    with distributed_cleanup():
        trainer = Trainer(cfg)
        progress: Any = None
        if trainer.rank == 0:
            progress = bar("training", total=steps, unit="step", initial=0)

            def show(step: int, record: dict[str, float]) -> None:
                progress.n = step
                progress.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    tr=f"{record['tr']:.3f}",
                    rtl=f"{record['rtl']:.3f}",
                    pairs_s=f"{record['pairs_per_s']:.0f}",
                    refresh=False,
                )
                progress.refresh()

            trainer.progress = show
        try:
            result = trainer.run(resume=resume)
        except Interrupted as exc:
            typer.echo(str(exc), err=True)
            raise SystemExit(130) from None
        finally:
            if progress is not None:
                progress.close()
        if trainer.rank == 0:
            best = (
                "no dev set"
                if result.best_score is None
                else f"best dev P@1 {result.best_score:.2f} at step {result.best_step}"
            )
            typer.echo(f"trained {result.steps} steps; {best}; model in {out / 'best'}")


@app.command("eval")
def eval_cmd(
    model: Annotated[list[Path], typer.Option("--model", help="Built model directory (repeat to compare).")],
    data: Annotated[Path, typer.Option("--data", help="Dev pairs directory (xx-en.tsv files).")],
    train_data: Annotated[
        Path | None,
        typer.Option(
            "--train-data",
            help="Dilute the mining sets with rows of these parallel files instead of spare dev rows "
            "(bigger sets, but biased against models trained on them).",
        ),
    ] = None,
    langs: LangsOpt = None,
    limit: Annotated[
        int | None, typer.Option(min=4, help="At most this many gold dev pairs per language.")
    ] = None,
    distractors: Annotated[
        int, typer.Option(min=0, help="Unrelated sentences per gold pair and side (mining).")
    ] = 1,
    backend: Annotated[str, typer.Option(help="torch | onnx | onnx-int8.")] = "torch",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Retrieval P@1 (xx→en, en→xx) and mining F1 per language, models side by side (markdown)."""
    from model.train.evaluate import markdown, run_evaluation, to_json

    for directory in model:
        if not (directory / "manifest.json").is_file():
            raise InputError(f"no built model in {directory} (build it with `dapsearch model build`)")
    if not data.is_dir():
        raise InputError(f"dev data directory not found: {data}")
    with bar("evaluating", unit="lang") as progress:
        reports = run_evaluation(
            model,
            data,
            _langs(langs),
            train_data,
            limit,
            distractors,
            parse_backend(backend),
            progress=lambda _: progress.update(1),
        )
    typer.echo(markdown(reports))
    if json_out is not None:
        json_out.write_text(to_json(reports) + "\n", encoding="utf-8")
