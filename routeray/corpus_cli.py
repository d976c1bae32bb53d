"""`routeray corpus`: unlabelled prompts from a public repository, with where they came from.

A `distilled` router learns its teacher's scores on unlabelled prompts (`routeray train
--corpus`). This turns a JSON Lines or JSON file at one commit of a fetched repository into a
Parquet file of prompts, and records the repository, commit, path and licence both in the
Parquet file's metadata and in a `<output>.source.json` next to it, so that a router trained on
it can say what it read.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from routeray.options import fail

SOURCE_KEY = b"routeray.source"


def _records(text: str, path: str) -> list[dict[str, Any]]:
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    loaded = json.loads(text)
    if not isinstance(loaded, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return loaded


def corpus(
    git_dir: Annotated[Path, typer.Option(help="Git directory of the fetched repository.")],
    path: Annotated[str, typer.Option(help="File inside the repository (.jsonl or .json).")],
    field: Annotated[str, typer.Option(help="The key holding each record's prompt.")],
    repository: Annotated[str, typer.Option(help="owner/name, recorded as the source.")],
    licence: Annotated[str, typer.Option(help="The data's licence, recorded as given.")],
    output: Annotated[Path, typer.Option(help="Parquet file to write.")],
    commit: Annotated[str, typer.Option(help="Commit to read (recorded in full).")] = "HEAD",
) -> None:
    """Write the prompts of one file of a fetched repository as Parquet, with provenance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", f"--git-dir={git_dir}", *args], capture_output=True, text=True
        )
        if done.returncode:
            fail(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    try:
        records = _records(git("show", f"{sha}:{path}"), path)
        prompts = [str(r[field]) for r in records if str(r.get(field) or "").strip()]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        fail(f"{path}: {exc}")
    if not prompts:
        fail(f"{path}: no record has a non-empty {field!r}")
    source = {
        "repository": repository,
        "commit": sha,
        "path": path,
        "field": field,
        "licence": licence,
        "records": len(records),
        "prompts": len(prompts),
    }
    table = pa.table({"prompt": prompts}).replace_schema_metadata(
        {SOURCE_KEY: json.dumps(source).encode()}
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output)
    output.with_name(output.name + ".source.json").write_text(json.dumps(source, indent=2) + "\n")
    typer.echo(f"wrote {len(prompts)} prompts from {repository}@{sha[:12]}:{path} to {output}")
