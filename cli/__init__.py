"""The ``dapsearch`` command line: ``serve``, and every sub-command registered here by name.

User mistakes (missing files, corrupt weights, bad options) print one line and exit 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import dequant_progress, load_settings
from cli.index import index_app
from cli.mine import mine_cmd
from cli.model import embed_cmd, model_app
from cli.snapshots import restore_cmd, snapshot_cmd
from cli.train import eval_cmd, train_cmd
from core.errors import InputError
from model.artifact import read_manifest
from model.backend_choice import choose_backend, default_export
from model.cpu import cpu_features

app = typer.Typer(
    help="dapsearch: multilingual semantic search with a DAP-aligned encoder.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Every command, by name, in one place: what `dapsearch --help` lists is what this file says.
index_app.command("snapshot")(snapshot_cmd)
index_app.command("restore")(restore_cmd)
app.add_typer(index_app, name="index")
app.add_typer(model_app, name="model")
app.command("embed")(embed_cmd)
app.command("mine")(mine_cmd)
app.command("train")(train_cmd)
app.command("eval")(eval_cmd)


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address [default: DAPSEARCH_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: DAPSEARCH_PORT or 8000].")] = None,
) -> None:
    """Serve the HTTP API; builds the default model from the bundled weights on first run."""
    import uvicorn

    from model.build import ensure_model
    from service.app import create_app
    from service.protocol import head_deadline_protocol

    cfg = load_settings()
    cpu = cpu_features()
    if cfg.model_dir is None:  # the default model is built on first run; a chosen one must exist
        ensure_model(
            cfg.resolved_model_dir,
            default_export(cpu) if cfg.backend == "auto" else cfg.backend,
            dequant_progress,
            announce=lambda msg: typer.echo(msg, err=True),
            bundled=cfg.model,
        )
    directory = cfg.resolved_model_dir
    choose_backend(cfg.backend, directory, read_manifest(directory), cpu)  # fails here, not in a log
    uvicorn.run(
        create_app(cfg),
        host=host or cfg.host,
        port=port or cfg.port,
        http=head_deadline_protocol(cfg.head_timeout_s, cfg.http_parser, cfg.max_head_bytes),
        # h11 refuses heads over its own 16 KiB with a 400 before ours can answer 431
        h11_max_incomplete_event_size=cfg.max_head_bytes + 65_536,
        timeout_keep_alive=cfg.keep_alive_s,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="dapsearch", standalone_mode=True)
    except InputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
