"""A router directory's card (`README.md`): what it was trained on, under which licences, and
how it did on data it did not train on, written from the checkpoint's own config so that the
card and the weights cannot disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CARD_FILE = "README.md"


def _apgr_table(
    title: str, by_source: dict[str, float], spread: dict[str, float] | None = None
) -> list[str]:
    if not by_source:
        return []
    if spread:
        lines = [f"### {title}", "", "| source | APGR | bootstrap sd |", "|---|---|---|"]
        lines += [
            f"| {s} | {v:.3f} | {spread.get(s, float('nan')):.3f} |" for s, v in by_source.items()
        ]
    else:
        lines = [f"### {title}", "", "| source | APGR |", "|---|---|"]
        lines += [f"| {s} | {v:.3f} |" for s, v in by_source.items()]
    return [*lines, ""]


def render_card(document: dict[str, Any]) -> str:
    """The card of a checkpoint document (`routers.read_config`'s dict)."""
    metadata = document.get("metadata") or {}
    training = metadata.get("training") or {}
    hyper = (document.get("config") or {}).get("hyperparameters") or {}
    lines = [f"# {document['router']} router", ""]
    if "default_threshold" in metadata:
        share = (metadata.get("calibration") or {}).get("strong_pct")
        lines += [
            f"Default threshold {metadata['default_threshold']:.4f}"
            + (f" ({share:.0%} strong calls on its calibration prompts)." if share else "."),
            "",
        ]
    sources = training.get("sources") or {}
    licences = training.get("licences") or {}
    if sources:
        lines += ["## Trained on", "", "| source | rows | licence |", "|---|---|---|"]
        for source, rows in sources.items():
            lines.append(f"| {source} | {rows} | {licences.get(source, 'not recorded')} |")
        lines.append("")
    excluded = training.get("not_trained_on") or {}
    if excluded:
        lines += ["## Not trained on", ""]
        lines += [f"- {source}: {why}" for source, why in excluded.items()]
        lines.append("")
    held_out = hyper.get("held_out_apgr_by_source") or {}
    if held_out:
        lines += [
            "## Held out",
            "",
            f"{hyper.get('held_out', 'held out')}: mean APGR {hyper.get('held_out_apgr', 0):.3f}"
            + (
                f"; all sources on one curve {hyper['held_out_apgr_pooled']:.3f}."
                if "held_out_apgr_pooled" in hyper
                else "."
            ),
            "",
        ]
        lines += _apgr_table(
            "Each source, scored by a router that did not see it",
            held_out,
            hyper.get("held_out_apgr_spread_by_source"),
        )
    lines += _apgr_table(
        "Transfer checks (never trained on)", metadata.get("transfer_checks") or {}
    )
    return "\n".join(lines).rstrip() + "\n"


def write_card(document: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(render_card(document))
    path.chmod(0o644)
    return path
