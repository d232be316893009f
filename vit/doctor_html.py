"""A doctor report's outputs: the terminal summary, ``report.json`` and ``index.html``.

The page is one self-contained file, a section per kind of issue.
Thumbnails are inline ``data:`` URIs and the style sheet is inline, so the page opens from disk,
from a CI artifact or an e-mail with nothing fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from serve.preprocess import decode_image

if TYPE_CHECKING:
    from vit.doctor import Issue, Report

THUMB_SIDE = 96
MAX_ISSUES_SHOWN = 200  # per kind; report.json has them all
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.4rem}h2{font-size:1.15rem;border-bottom:1px solid #ccc;padding-bottom:.2rem}
nav a{margin-right:1rem}.issue{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-start;
background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem;margin:.5rem 0}
.score{font-weight:600;min-width:4rem}.detail{min-width:10rem;font-size:.85rem}
figure{margin:0;width:104px;font-size:.7rem;word-break:break-all}
img,.missing{width:96px;height:96px;object-fit:contain;background:#eee;display:block;
image-rendering:pixelated}.missing{display:flex;align-items:center;justify-content:center;color:#a00}
table{border-collapse:collapse}td,th{padding:.15rem .6rem;text-align:left}
"""  # 96 px: THUMB_SIDE
TITLES = {
    "unreadable": "Unreadable files (skipped by vit fit)",
    "duplicate": "Exact duplicates within a class",
    "near_duplicate": "Near duplicates within a class (re-encoded, resized)",
    "leak": "Leaks: the same picture in more than one split",
    "conflict": "Conflicts: the same picture under more than one class",
    "label": "Likely label errors (cleanlab, out-of-sample probabilities)",
    "outlier": "Outliers (far from every other image in feature space)",
}


def thumbnail_uri(path: str) -> str | None:
    """A JPEG ``data:`` URI of ``path`` fitted into THUMB_SIDE pixels, or None when it cannot be read."""
    try:
        image = decode_image(path)
    except Exception:  # noqa: BLE001 - the unreadable section shows the reason instead
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(report: Report, relative: str, places: dict[str, tuple[str, str, str]]) -> str:
    path, split, label = places.get(relative, (str(relative), "", ""))
    uri = thumbnail_uri(path)
    name = html.escape(relative)
    if uri is None:
        picture = f'<div class="missing">{html.escape(report.reasons.get(relative, "unreadable")[:40])}</div>'
    else:
        picture = f'<img src="{uri}" alt="{name}" title="{name}">'
    caption = f"{html.escape(split)} · {html.escape(label)}<br>{name}"
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _issue(report: Report, issue: Issue, places: dict[str, tuple[str, str, str]]) -> str:
    detail = ""
    if issue.kind == "label":
        detail = f"given <b>{html.escape(issue.given or '')}</b>, suggested <b>{html.escape(issue.suggested or '')}</b>"
    elif issue.kind == "unreadable":
        detail = html.escape(report.reasons.get(issue.paths[0], ""))
    elif len(issue.paths) > 1:
        detail = f"{len(issue.paths)} files"
    figures = "".join(_figure(report, p, places) for p in issue.paths[:12])
    more = f'<div class="detail">+{len(issue.paths) - 12} more</div>' if len(issue.paths) > 12 else ""
    return (
        f'<div class="issue" data-kind="{issue.kind}"><div class="score">{issue.score:.2f}</div>'
        f'<div class="detail">{detail}</div>{figures}{more}</div>'
    )


def _facts(report: Report) -> str:
    facts = report.facts
    if not facts:
        return ""
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{c}</td></tr>" for n, c in facts["classes"].items())
    lines = [
        f"model input {facts['model_input']} px; {facts['small_images']} image(s) with a shorter side under half of it",
        "colour modes: " + ", ".join(f"{html.escape(str(m))} {n}" for m, n in facts["modes"].items()),
        f"{facts['exif_rotated']} image(s) rotated by EXIF orientation",
        "classes under 10% of the largest: "
        + (", ".join(map(html.escape, facts["small_classes"])) or "none"),
    ]
    items = "".join(f"<li>{line}</li>" for line in lines)
    return (
        f'<section id="facts"><h2>Facts</h2><ul>{items}</ul>'
        f"<table><tr><th>class</th><th>images</th></tr>{rows}</table></section>"
    )


def render_page(report: Report) -> str:
    """The whole page as one string."""
    from vit.doctor import KINDS

    places = {item.relative: (item.path, item.split, report.classes[item.label]) for item in report.items}
    counts = report.counts()
    nav = "".join(f'<a href="#{kind}">{kind} ({counts[kind]})</a>' for kind in KINDS)
    sections = []
    for kind in KINDS:
        found = [issue for issue in report.issues if issue.kind == kind]
        body = "".join(_issue(report, issue, places) for issue in found[:MAX_ISSUES_SHOWN])
        if len(found) > MAX_ISSUES_SHOWN:
            body += f"<p>… and {len(found) - MAX_ISSUES_SHOWN} more in report.json</p>"
        if not found:
            body = "<p>none found</p>"
        sections.append(
            f'<section id="{kind}" data-count="{len(found)}"><h2>{html.escape(TITLES[kind])} — {len(found)}</h2>{body}</section>'
        )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in report.notes)
    title = f"vit doctor: {html.escape(report.root)}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{len(report.items)} images in {len(report.classes)} classes.</p>"
        f"<nav>{nav}</nav>{'<ul>' + notes + '</ul>' if notes else ''}{''.join(sections)}{_facts(report)}"
        "</body></html>\n"
    )


def format_summary(report: Report, examples: int = 3) -> str:
    """Counts per kind, the worst examples of each, and the facts (the terminal's view)."""
    from vit.doctor import KINDS

    counts = report.counts()
    lines = [f"vit doctor: {len(report.items)} images in {len(report.classes)} classes under {report.root}"]
    for kind in KINDS:
        found = [issue for issue in report.issues if issue.kind == kind]
        lines.append(f"  {kind:<15} {counts[kind]:>6}")
        for issue in found[:examples]:
            shown = ", ".join(issue.paths[:3]) + (
                f" (+{len(issue.paths) - 3})" if len(issue.paths) > 3 else ""
            )
            extra = f"  given {issue.given}, suggested {issue.suggested}" if issue.given else ""
            reason = f"  ({report.reasons[issue.paths[0]]})" if kind == "unreadable" else ""
            lines.append(f"      {issue.score:.2f}  {shown}{extra}{reason}")
    facts = report.facts
    if facts:
        if facts["small_classes"]:
            lines.append(f"  fact: classes under 10% of the largest: {', '.join(facts['small_classes'])}")
        if facts["small_images"]:
            lines.append(
                f"  fact: {facts['small_images']} image(s) with a shorter side under half the model input "
                f"({facts['model_input']} px)"
            )
        if len(facts["modes"]) > 1:
            lines.append("  fact: colour modes " + ", ".join(f"{m}={n}" for m, n in facts["modes"].items()))
        if facts["exif_rotated"]:
            lines.append(f"  fact: {facts['exif_rotated']} image(s) rotated by their EXIF orientation")
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """``report.json`` and ``index.html`` in ``out_dir``, each written atomically."""
    from vit.atomic import write_atomic
    from vit.doctor_html import render_page

    out_dir = Path(out_dir)
    json_path, html_path = out_dir / "report.json", out_dir / "index.html"
    write_atomic(json_path, (json.dumps(report.to_dict(), indent=1) + "\n").encode())
    write_atomic(html_path, render_page(report).encode())
    return json_path, html_path
