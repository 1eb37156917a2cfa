"""The `cascache eval` command (registered in cli.py with `app.command("eval")(eval_command)`).

Kept here rather than in cli.py so that the CLI module stays a list of thin
commands; everything it does is in `cascache.quality`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cascache._errors import ConfigError
from cascache.config import Settings, load_settings
from cascache.quality.data import read_pairs, read_streams
from cascache.quality.evaluate import DEFAULT_SWEEP, EvalOptions, evaluate, sweep
from cascache.quality.report import print_report, write_report
from cascache.tiers.guards import ALL_GUARDS, validate_guard_names

__all__ = ["eval_command"]


def _guards(spec: str | None, settings: Settings) -> tuple[str, ...]:
    if spec is None:
        return tuple(settings.semantic.guards)
    if spec.strip() == "all":
        return ALL_GUARDS
    if spec.strip() == "none":
        return ()
    return validate_guard_names(spec.split(","))


def eval_command(
    pairs: Annotated[
        list[Path] | None,
        typer.Option(
            "--pairs",
            exists=True,
            help="Labelled pairs {a, b, same_answer[, category]} (JSONL file or folder; repeatable)",
        ),
    ] = None,
    stream: Annotated[
        list[Path] | None,
        typer.Option(
            "--stream",
            exists=True,
            help="Labelled query streams {text, label[, stream, context]} to tune on (repeatable)",
        ),
    ] = None,
    holdout: Annotated[
        list[Path] | None,
        typer.Option(
            "--holdout",
            exists=True,
            help="Held-out streams: replayed only at the chosen and configured thresholds",
        ),
    ] = None,
    target_fhr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-hit rate to stay within")] = 0.01,
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="Sweep: start:stop:step or a comma list [default: 0.50..0.85 by 0.05, 0.86..0.99 by 0.01]"
        ),
    ] = None,
    guards: Annotated[
        str | None, typer.Option(help="all, none, or a comma list of guards [default: semantic.guards]")
    ] = None,
    k: Annotated[int | None, typer.Option(min=1, help="Candidates per lookup [default: semantic.k]")] = None,
    bound: Annotated[str, typer.Option(help="wilson or clopper-pearson")] = "wilson",
    rule: Annotated[str, typer.Option(help="upper (bound within target) or point (measured rate)")] = "upper",
    confidence: Annotated[float, typer.Option(min=0.51, max=0.999)] = 0.95,
    out: Annotated[Path, typer.Option(help="Folder for report.json, report.html, hit_vs_fhr.png")] = Path(
        "eval-report"
    ),
    config: Annotated[Path | None, typer.Option(help="TOML config file")] = None,
) -> None:
    """Measure hit and false-hit rates on labelled data; recommend a threshold (docs/eval.md)."""
    from cascache.cache import build_embedder

    if not (pairs or stream or holdout):
        typer.echo("cascache: give --pairs, --stream and/or --holdout (docs/eval.md)", err=True)
        raise typer.Exit(2)
    if bound not in ("wilson", "clopper-pearson") or rule not in ("upper", "point"):
        typer.echo("cascache: --bound is wilson or clopper-pearson; --rule is upper or point", err=True)
        raise typer.Exit(2)
    try:
        settings = load_settings(config)
        options = EvalOptions(
            thresholds=sweep(thresholds) if thresholds else DEFAULT_SWEEP,
            configured_threshold=settings.semantic.threshold,
            guards=_guards(guards, settings),
            k=k or settings.semantic.k,
            consensus=settings.semantic.consensus_rule(),
            policy=settings.policy,
            target_fhr=target_fhr,
            confidence=confidence,
            bound=bound,  # type: ignore[arg-type]  # checked above
            rule=rule,  # type: ignore[arg-type]
            cache_dir=Path(settings.data_dir) / "eval-embeddings",
        )
        labelled_pairs = read_pairs(pairs or [])
        streams, held = read_streams(stream or []), read_streams(holdout or [])
    except (ConfigError, ValueError) as exc:
        typer.echo(f"cascache: {exc}", err=True)
        raise typer.Exit(2) from None
    console = Console(stderr=True)

    async def run() -> None:
        embedder = build_embedder(settings)
        try:
            report = await evaluate(
                embedder,
                pairs=labelled_pairs,
                streams=streams,
                holdout=held,
                options=options,
                console=console,
            )
        finally:
            await embedder.close()
        print_report(report, Console())
        for kind, path in write_report(report, out).items():
            console.print(f"wrote {kind}: {path}")

    asyncio.run(run())
