"""`cascache eval` end to end: files in, tables and report files out, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from cascache.quality.command import eval_command

app = typer.Typer()
app.command("eval")(eval_command)
app.command("noop")(lambda: None)  # two commands, so "eval" is addressed by name as in cli.py


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_writes_a_report_with_a_recommendation(tmp_path: Path) -> None:
    pairs = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {
                "a": "Track order 48213",
                "b": "Track order 48231",
                "same_answer": False,
                "category": "number_date",
            },
            {
                "a": "How do I reset my password?",
                "b": "How do I reset my password",
                "same_answer": True,
                "category": "near_repeat",
            },
        ],
    )
    stream = _jsonl(
        tmp_path / "stream.jsonl",
        [
            {"text": "How do I reset my password?", "label": "pw"},
            {"text": "how do i reset my password", "label": "pw"},
            {"text": "Where is my card?", "label": "card"},
            {"text": "where is my card", "label": "card"},
        ],
    )
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--pairs",
            str(pairs),
            "--stream",
            str(stream),
            "--holdout",
            str(stream),
            "--guards",
            "all",
            "--thresholds",
            "0.8,0.9",
            "--target-fhr",
            "0.5",
            "--rule",
            "point",
            "--out",
            str(tmp_path / "out"),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Recommended threshold" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["recommendation"]["threshold"] == 0.8
    assert report["options"]["guards"][0] == "identifier"
    trap = next(c for c in report["pairs"][0]["categories"] if c["category"] == "number_date")
    assert trap["hits"] == 0 and trap["vetoes"] == {"identifier": 1}
    assert any((tmp_path / "data" / "eval-embeddings").iterdir())  # embeddings kept for the next run


def test_eval_refuses_missing_input_and_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["eval"]).exit_code == 2
    pairs = _jsonl(tmp_path / "p.jsonl", [{"a": "x", "b": "y", "same_answer": True}])
    for bad in (["--guards", "numbers"], ["--thresholds", "0.9:0.8:0.1"], ["--bound", "bayes"]):
        result = runner.invoke(app, ["eval", "--pairs", str(pairs), *bad])
        assert result.exit_code == 2, (bad, result.output)
