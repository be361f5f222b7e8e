"""The run report: one HTML page, objective and verdict first, then how the data got there.

Built only from the files the stages wrote (run.json, manifests, drops tables, the
review summary, the adapter's curves, eval.json), so it can be rebuilt at any time and
mailed as it is: plots are embedded PNGs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any


from curate import plots
from curate.atomic import write_text
from curate.readers import read_records
from curate.report import curation_sections, img, page, table
from recipes.update import history, read_json


def write_run_report(ctx, output: Path) -> Path:
    """Write the report of the run in `ctx` (a `recipes.runner.Context`) to `output`."""
    recipe, run_dir = ctx.recipe, ctx.run_dir
    by_name = {s.name: s for s in ctx.stages}
    evaluation = read_json(run_dir / "eval" / "eval.json")
    sections = [
        _objective(recipe, evaluation, _training_set(by_name), _audit(by_name)),
        _curve(run_dir),
        _ablations(recipe, evaluation),
        _history(run_dir),
        _stages(ctx),
        _sources(run_dir, by_name),
    ]
    curated, candidates = _training_set(by_name), by_name["merge"].output if "merge" in by_name else None
    if curated is not None and curated.exists():  # labels and lengths: every candidate row against the training set
        sections += curation_sections(curated, before=candidates if candidates and candidates.exists() else None,
                                      names=("all candidates", "training set"))
    sections += [_review(run_dir), _training(run_dir), _evaluation(run_dir, evaluation)]
    body = "\n".join(s for s in sections if s)
    write_text(output, page(f"Run report: {recipe.name}", body))
    return output


def _training_set(by_name: dict) -> Path | None:
    """What `train lora` reads: the reviewed rows, else the last curation step's output."""
    train = by_name.get("train")
    return train.inputs[0] if train is not None and train.inputs else None


def _audit(by_name: dict) -> dict[str, Any] | None:
    """`curate audit --json` of the training set against the real rows (the audit stage, when the recipe synthesizes)."""
    stage = by_name.get("audit")
    return read_json(stage.output) if stage is not None else None


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _verdict(evaluation: dict[str, Any] | None) -> tuple[str, str]:
    verdict = (evaluation or {}).get("objective")
    if not verdict:
        return "pending", "no evaluation yet"
    text = str(verdict.get("text") or "")
    for prefix in ("PASS: ", "FAIL: "):
        text = text.removeprefix(prefix)
    margin = verdict.get("margin_interval") or verdict.get("interval")
    if margin:
        what = "margin over the reference" if verdict.get("margin_interval") else verdict.get("metric", "metric")
        text += f"; 95% interval of the {what}: [{margin['low']:.4f}, {margin['high']:.4f}]"
    return ("pass" if verdict.get("passed") else "fail"), text


def _synthetic_share(training_set: Path | None) -> tuple[int, int] | None:
    """(synthetic rows, all rows) of the training set, or None before it exists."""
    if training_set is None or not training_set.exists():
        return None
    from curate.review.routing import is_synthetic

    df = read_records(training_set).records
    return int(df.select(is_synthetic().sum()).item() or 0), df.height


_COLOURS = {"pass": "#2a7d2a", "fail": "#b22222"}


def _audit_verdict(audit: dict[str, Any] | None, key: str) -> tuple[str, str]:
    """('pass' | 'fail' | 'not run' | 'pending', why) of one of `curate audit`'s verdicts (`fidelity`, `privacy`)."""
    if audit is None:
        return "pending", "not audited yet"
    part = audit.get(key) or {}
    return str(part.get("verdict", "not run")), "; ".join(map(str, part.get("reasons") or []))


def _facts(recipe, training_set: Path | None, audit: dict[str, Any] | None) -> str:
    """Beside the verdict: how much of the training set is synthetic, and whether those rows are faithful and safe."""
    share = _synthetic_share(training_set)
    if share is None:
        line = "not built yet"
    else:
        synthetic, total = share
        pct = f"{synthetic / total:.1%}" if total else "-"
        line = f"{total} rows, {synthetic} synthetic ({pct}), {total - synthetic} real"
    items = [f'<li id="synthetic-share"><b>Training set:</b> {html.escape(line)}</li>']
    if recipe.data.synth:
        for key, title in (("fidelity", "Synthetic fidelity"), ("privacy", "Privacy")):
            status, why = _audit_verdict(audit, key)
            if audit is not None and not recipe.data.real:
                why = "the recipe has no real rows to compare the synthetic ones with"
            colour = _COLOURS.get(status, "#777")
            items.append(f'<li id="{key}-verdict"><b>{title}:</b> <span style="color:{colour}"><b>{html.escape(status.upper())}</b>'
                         f"</span>{' ' + html.escape(why) if why else ''}</li>")
    if audit is not None:
        items.append('<li>The audit in full: <a href="audit/audit.html">audit/audit.html</a></li>')
    return "<ul>" + "".join(items) + "</ul>"


def _objective(recipe, evaluation: dict[str, Any] | None, training_set: Path | None = None,
               audit: dict[str, Any] | None = None) -> str:
    obj = recipe.objective
    target = (f"{obj.metric} at least {obj.target.value:g} points above {obj.target.over.replace('_', '-')}"
              if obj.target.over else f"{obj.metric} at least {obj.target.value:g}")
    status, summary = _verdict(evaluation)
    colour = {"pass": "#2a7d2a", "fail": "#b22222"}.get(status, "#777")
    desc = f"<p>{html.escape(recipe.description)}</p>" if recipe.description else ""
    return (f"<h2>Objective and verdict</h2>{desc}"
            f"<p><b>Task:</b> {html.escape(obj.task)}. <b>Target:</b> {html.escape(target)}.</p>"
            f'<p id="verdict" style="font-size:1.4em;color:{colour}"><b>Verdict: {status.upper()}</b> '
            f"{html.escape(summary)}</p>" + _facts(recipe, training_set, audit))


def _curve(run_dir: Path) -> str:
    """The learning curve beside the verdict: is more data worth it, and how many rows are enough?"""
    curve = read_json(run_dir / "curve" / "curve.json")
    if not curve:
        return ""
    rows = [[p["size"], _pct(p["value"]), f"[{_pct(p['low'])}, {_pct(p['high'])}]", f"{p.get('train_seconds') or 0:.0f}"]
            for p in curve["points"]]
    knee = curve["knee"]
    png = run_dir / "curve" / "curve.png"
    kshot = curve["baselines"]["kshot"]["value"]
    return ("<h2>Learning curve</h2>"
            f'<p id="knee"><b>Knee: {knee["size"]} rows.</b> {html.escape(knee["reason"])}; base k-shot {_pct(kshot)}. '
            f"Sizes are nested, seeded subsets of the training set ({html.escape(curve['stratify'])} label mix), "
            f"all scored on the same {curve['rows_tested']} test rows.</p>"
            + (img(_png(png), "learning curve") if png.exists() else "")
            + table(["training rows", curve["metric"], "95% interval", "training seconds"], rows))


def _ablations(recipe, evaluation: dict[str, Any] | None) -> str:
    """Each left-out step's effect on the objective, in words and with a paired interval."""
    if not evaluation or not recipe.ablate:
        return ""
    metric = recipe.objective.metric
    full = evaluation["intervals"]["adapter"][metric]
    rows, words = [], []
    for name in recipe.ablate:
        key = f"no-{name}"
        diff = (evaluation.get("differences") or {}).get(f"{key}-adapter", {}).get(metric)
        ci = (evaluation.get("intervals") or {}).get(key, {}).get(metric)
        if diff is None or ci is None:
            continue
        effect = -diff["value"] * 100  # what the step adds: the full pipeline minus the variant without it
        lo, hi = -diff["high"] * 100, -diff["low"] * 100
        if not diff["significant"]:
            verdict = "no clear effect"
            sentence = (f"{name}: no clear effect ({effect:+.1f} points, interval {lo:+.1f} to {hi:+.1f} "
                        "includes zero)")
        else:
            verdict = "helped" if effect > 0 else "hurt"
            sentence = f"{name} {verdict}: {abs(effect):.1f} points of {metric} (interval {lo:+.1f} to {hi:+.1f})"
        words.append(sentence)
        rows.append([f"without {name}", _pct(ci["value"]), f"[{_pct(ci['low'])}, {_pct(ci['high'])}]",
                     f"{effect:+.1f}", f"[{lo:+.1f}, {hi:+.1f}]", verdict])
    return ("<h2>Ablations: what each step did to the objective</h2>"
            f"<p>Every variant is the recipe without one step or source, trained with the same settings and "
            f"seed and scored by the same engine on the same test rows against the same k-shot baseline. "
            f"Full pipeline: {metric} {_pct(full['value'])} [{_pct(full['low'])}, {_pct(full['high'])}].</p>"
            + "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>"
            + table(["variant", metric, "95% interval", "the step's effect (points)", "paired 95% interval", "verdict"], rows))


def _history(run_dir: Path) -> str:
    """Versions of the adapter, one per update (`smallset run --update`): metric per test set, drift, the decision."""
    versions = history(run_dir)
    if len(versions) < 2:
        return ""
    metric = versions[0]["metric"]
    tests = list(dict.fromkeys(t for v in versions for t in v["tests"]))
    scores = {v["version"]: dict(v["candidate"]) for v in versions}
    for v in versions:  # a version scored as the current adapter by a later update: how it fared on newer data
        for test, found in (v.get("current") or {}).items():
            scores.get(v["parent"], {}).setdefault(test, found)
    rows = []
    for v in versions:
        drift = v.get("drift")
        shift = "-" if not drift else ("drift" if drift["drift"] else "no drift") + (
            f" (AUC {drift['auc']:.2f})" if drift.get("auc") is not None else "")
        counts = v.get("rows") or {}
        new = "-" if counts.get("new") is None else f"{counts['new']} in, {counts['kept']} kept"
        mine = scores[v["version"]]
        cells = [(f"{_pct(s['value'])} [{_pct(s['low'])}, {_pct(s['high'])}]" if (s := mine.get(t)) else "") for t in tests]
        status = v["status"] + (" (current)" if v["in_use"] else "")
        rows.append([v["version"], v["parent"] or "-", status, new, counts.get("training", ""), shift, *cells])
    by_version = [f"v{v['version']}" + (" (refused)" if v["status"] == "refused" else "") for v in versions]
    chart = plots.bars(by_version, {t: [100 * scores[v["version"]][t]["value"] if t in scores[v["version"]] else 0
                                        for v in versions] for t in tests}, xlabel="version", ylabel=f"{metric} (%)")
    why = "".join(f"<li>v{v['version']}: {html.escape(v['reason'])}"
                  + (f". Terms new in its batch: {html.escape(', '.join(v['drift']['terms']))}"
                     if (v.get('drift') or {}).get('terms') else "") + "</li>" for v in versions)
    return ('<h2 id="history">Versions: one per update</h2><p>Each update trained a candidate and scored it beside '
            "the adapter then in use, on every earlier test set and the new one; it is promoted only when it is not "
            "worse on the earlier ones (beyond the tolerance, by the paired 95% interval) and better on the new one. "
            "A version's figure on a test set newer than itself was measured when a later update compared "
            "its candidate with it. Every version is kept in versions/N/; current.json names the one in use.</p>"
            + img(chart, f"{metric} per version and test set")
            + table(["version", "from", "decision", "new rows", "training rows", "new rows vs training set",
                     *(f"{metric}: {t}" for t in tests)], rows)
            + f"<ul>{why}</ul>")


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _manifests(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.manifest.json"))] if folder.exists() else []


def _tokens(manifests: list[dict[str, Any]]) -> int:
    total = 0
    for m in manifests:
        usage = m.get("parameters", {}).get("usage") or m.get("metrics", {}).get("usage") or {}
        total += int(usage.get("prompt_tokens", 0) or 0) + int(usage.get("completion_tokens", 0) or 0)
        total += int(m.get("counts", {}).get("tokens_trained", 0) or 0)
    return total


def _stages(ctx) -> str:
    rows, names, seconds = [], [], []
    for stage in ctx.stages:
        entry = ctx.state["stages"].get(stage.name, {})
        if stage.name == "report":
            entry = {**entry, "status": "done"}  # this page is its output
        tokens = _tokens(_manifests(stage.folder)) if stage.folder != ctx.run_dir else 0
        rows.append([stage.name, stage.what, entry.get("status", "not run"), f"{entry.get('seconds', 0):.1f}",
                     f"{tokens:,}" if tokens else ""])
        names.append(stage.name)
        seconds.append(entry.get("seconds", 0))
    chart = plots.bars(names, {"seconds": seconds}, ylabel="seconds")
    return ("<h2>Stages: time and tokens</h2>" + img(chart, "seconds per stage")
            + table(["stage", "what", "status", "seconds", "tokens (LLM in+out, or trained)"], rows))


def _sources(run_dir: Path, by_name: dict) -> str:
    rows, section = [], ""
    for name in ("real", "synth"):
        stage = by_name.get(name)
        if stage is None or not stage.output.exists():
            continue
        m = _stage_manifest(stage.output)
        counts = m.get("counts", {})
        rows.append([name, counts.get("out", ""), counts.get("unparsable", ""), counts.get("privacy_dropped", "")])
        if name == "synth":
            params = m.get("parameters", {})
            found = ", ".join(f"{k}: {v}" for k, v in sorted((params.get("privacy") or {}).items())) or "nothing found"
            section = (f"<p>Privacy guard: {'on' if params.get('privacy_guard') else 'off'}"
                       f"{'. ' + html.escape(found) if params.get('privacy_guard') else ''}.</p>")
    section = "<h2>Real and synthetic examples</h2>" + table(
        ["source", "rows", "unparsable", "dropped by the privacy guard"], rows) + section
    return section  # the training set's synthetic share stands beside the verdict


def _stage_manifest(output: Path) -> dict[str, Any]:
    from curate.manifest import manifest_path

    return read_json(manifest_path(output)) or {}


def _review(run_dir: Path) -> str:
    summary = read_json(run_dir / "review" / "review.json")
    if not summary:
        return ""
    outcomes = summary.get("outcomes", {})
    rows = [[k, v] for k, v in outcomes.items()]
    parts = [f"<h2>Review</h2><p>Argilla dataset <b>{html.escape(str(summary.get('dataset')))}</b> at "
             f"{html.escape(str(summary.get('url', '')))}: {summary.get('routed', 0)} rows routed to people.</p>",
             table(["outcome", "rows"], rows)]
    agreement = summary.get("agreement")
    if agreement:
        parts.append("<h3>Agreement between annotators</h3>" + table(
            ["question", "records", "pairs agreeing", "Krippendorff's alpha"],
            [[a["question"], a["units"], "-" if a.get("pairwise") is None else f"{a['pairwise']:.0%}",
              f"{a['alpha']:.3f}" if a.get("alpha") is not None else f"- ({a.get('note') or 'n/a'})"]
             for a in agreement]))
    return "".join(parts)


def _training(run_dir: Path) -> str:
    curves = run_dir / "train" / "curves.png"
    manifests = _manifests(run_dir / "train")
    if not curves.exists() and not manifests:
        return ""
    metrics = manifests[0].get("metrics", {}) if manifests else {}
    counts = manifests[0].get("counts", {}) if manifests else {}
    facts = [["train rows", counts.get("train_rows", "")], ["validation rows", counts.get("validation_rows", "")],
             ["best epoch", metrics.get("best_epoch", "")], ["best validation loss", metrics.get("best_val_loss", "")],
             ["base model validation loss", metrics.get("base_val_loss", "")],
             ["stopped early", metrics.get("stopped_early", "")], ["tokens/s", metrics.get("tokens_per_s", "")]]
    return ("<h2>Training</h2>" + (img(_png(curves), "training curves") if curves.exists() else "")
            + table(["", ""], facts))


def _evaluation(run_dir: Path, evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return ""
    results = evaluation.get("metrics") or evaluation.get("results") or {}
    names = sorted({k for v in results.values() if isinstance(v, dict) for k, x in v.items() if isinstance(x, (int, float))})
    rows = [[who, *(_fmt(vals.get(n)) for n in names)] for who, vals in results.items() if isinstance(vals, dict)]
    section = "<h2>Evaluation on the held-out test set</h2>" + table(["contender", *names], rows)
    for png in sorted((run_dir / "eval").glob("*.png")):
        section += img(_png(png), png.stem)
    return section


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "" if value is None else str(value)
