"""The project's claim on real data: does a curated few hundred rows beat the raw pool?

    python benchmarks/evidence.py                                    # 2,000-row pool, 300 test rows, every arm
    python benchmarks/evidence.py --pool 240 --test-size 60 --versions clean --arms raw,curated

Issue 14, item 7. The task is real text written by others, labelled by a fact: Debian's
man pages by section (`benchmarks/man_corpus.py`: a page's NAME description plus the
first sentences of its DESCRIPTION -> "user command", "system call", "library function",
"file format", "overview" or "admin command"), in their natural, imbalanced mix. A seeded
held-out test set of --test-size rows and a disjoint pool of --pool rows are drawn from
one shuffled order of the pages, so both keep the natural mix. Without /usr/share/man the
task falls back to the docstring corpus of tests/corpus.py (and says so).

Two versions of the pool, one test set:
  clean   the pool as it is;
  noisy   the noise users meet, planted: a skewed class mix (the rarer half of the classes
          at 40% of their natural share), 15% of those rows' labels flipped, templated
          duplicates (15% of the pool: a row copied with a greeting and a signature, or with
          a few words changed) and off-task rows (5%: sentences from
          /usr/share/common-licenses, given a random label). Same size as the clean pool.

Arms, each through smallset's own CLIs in subprocesses (.venv/bin/curate, .venv/bin/train):
  raw               curate ingest, then train lora
  curated           the recipe defaults: dedup (exact, near, semantic) -> decontaminate
                    against the test set -> filter (allowed labels) -> check-labels (no
                    trusted rows) -> select (size and stratification left to its defaults:
                    --size auto --metric accuracy --test TEST when `curate select` has them,
                    else --size 1000) -> train lora
  no-STEP           the curated chain without STEP (one ablation per step)
  pending           the curated chain, then the rows it flagged for review (check-labels'
                    label_issue, dedup's label_conflict) left out, as a recipe with a review
                    section and `wait: false` trains before anyone has answered
  reviewed          the curated chain, then the flagged rows read by a simulated annotator who
                    knows the truth (noisy version: the planted label; clean: the given one):
                    a wrong label corrected, an off-task row rejected, the rest accepted, written
                    as `curate review pull` writes decisions. The table says how many rows a
                    person would have read. (No Argilla server: a person's answers cannot be
                    caused otherwise; the routing and what is done with the answers are the tool's.)
Curation outputs are shared between arms with a common prefix of steps.

Every adapter is scored by `train eval ADAPTER --test TEST --shots-from POOL --metric
accuracy --target 0.5` with the same pool file and seed, so the k-shot baseline is one
baseline. From predictions.parquet, with train/bootstrap.py on one set of resampled test
rows: accuracy and macro-F1 with 95% bootstrap intervals, and each arm's difference from
raw with a paired interval. Training seconds come from the adapter manifest
(metrics.train_seconds: the optimizer steps alone).

Targets (issue 14): clean, the curated arm is never worse than raw beyond the interval
(the paired interval of the difference reaches 0 or above, accuracy and macro-F1); noisy,
the curated arm trains on <= 1,000 rows, beats raw (the paired accuracy interval above
0) and trains in less time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before benchmarks/, whose train.py would shadow the train package


def _load(name: str, path: Path):
    """A module by path: benchmarks/ is no package, and putting it on sys.path would shadow `train`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


man_corpus = _load("smallset_man_corpus", Path(__file__).resolve().parent / "man_corpus.py")

from curate.atomic import write_text  # noqa: E402
from curate.conditions import is_flagged  # noqa: E402
from train.bootstrap import interval, paired_difference, resample_indices  # noqa: E402

STEPS = ("dedup", "decontaminate", "filter", "check-labels", "select")
REVIEW_ARMS = ("pending", "reviewed")
ARMS = ("raw", "curated", *REVIEW_ARMS, *(f"no-{s}" for s in STEPS))
VERSIONS = ("clean", "noisy")
TASK, METRICS = "classification", ("accuracy", "macro_f1")
NOISY_MAX_ROWS = 1000  # the "curated set of <= 1,000 rows"

# The planted noise of the noisy version.
FLIP_SHARE = 0.15  # of the real rows
DUPLICATE_SHARE = 0.15  # of the pool
OFF_TASK_SHARE = 0.05  # of the pool
RARE_WEIGHT = 0.4  # the rarer half of the classes at this share of their natural weight
GREETINGS = ("Hi team,", "Hello all,", "Good morning,", "Hey there, quick one:", "Dear support,")
SIGNATURES = ("Thanks in advance!", "Best regards, Sam", "Cheers, the docs team", "Sent from my phone",
              "Kind regards, IT helpdesk")
SWAPS = {"the": "a", "a": "the", "is": "gets", "and": "plus", "of": "for", "to": "into", "in": "within",
         "file": "document", "files": "documents", "function": "routine", "returns": "gives back"}
OFF_TASK_FALLBACK = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"


class BenchmarkError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# -- the task --------------------------------------------------------------------------------


@dataclass
class Task:
    """The held-out test rows and the pool, drawn from one order of one corpus."""

    source: str
    test: list[dict[str, str]]
    pool: list[dict[str, str]]
    extra: Any  # more rows of the same order, beyond test and pool: an iterator
    labels: list[str]


def build_task(pool_size: int, test_size: int, seed: int) -> Task:
    """Test rows first, then pool rows, from one seeded order of the corpus: both in the natural mix."""
    need = pool_size + test_size
    if man_corpus.available():
        corpus = man_corpus.ManCorpus(seed)
        rows = corpus.take(need)
        names = "\n".join(str(p) for p in corpus.files_sorted())
        fingerprint = hashlib.blake2b(names.encode(), digest_size=6).hexdigest()
        # The pages are whatever Debian packages are installed: a package installed between two runs
        # (chromium brings its own pages) reshuffles the order, so runs compare only at one fingerprint.
        source = (f"Debian man pages ({man_corpus.MAN_ROOT}, sections {', '.join(man_corpus.SECTIONS)}; "
                  f"{len(corpus.files)} pages, fingerprint {fingerprint})")
        extra = iter(corpus)
        for _ in range(len(rows)):
            next(extra)
    else:
        print(f"{man_corpus.MAN_ROOT} not found: falling back to the docstring corpus of tests/corpus.py")
        every = docstring_rows(seed)
        rows, extra = every[:need], iter(every[need:])
        source = "Python docstrings (tests/corpus.py)"
    if len(rows) < need:
        raise BenchmarkError(f"the corpus has {len(rows)} usable rows, fewer than --pool {pool_size} + "
                             f"--test-size {test_size}: ask for fewer")
    test, pool = rows[:test_size], rows[test_size:need]
    return Task(source, test, pool, extra, sorted({r["label"] for r in rows}))


def docstring_rows(seed: int) -> list[dict[str, str]]:
    """tests/corpus.py's docstring corpus, imported by path, in a seeded order."""
    path = ROOT / "tests" / "corpus.py"
    if not path.is_file():
        raise BenchmarkError(f"neither {man_corpus.MAN_ROOT} nor {path} is there: no corpus to build the task from")
    rows = _load("smallset_test_corpus", path).docstring_corpus()
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]


# -- the noisy version ------------------------------------------------------------------------


def skewed_targets(pool: list[dict[str, str]], n: int) -> dict[str, int]:
    """Rows per class for n real rows: the natural mix, the rarer half of the classes down-weighted."""
    counts = Counter(r["label"] for r in pool)
    ranked = sorted(counts, key=lambda lab: (-counts[lab], lab))
    rare = set(ranked[len(ranked) - len(ranked) // 2:])
    weights = {lab: counts[lab] * (RARE_WEIGHT if lab in rare else 1.0) for lab in ranked}
    total = sum(weights.values())
    exact = {lab: n * w / total for lab, w in weights.items()}
    targets = {lab: int(v) for lab, v in exact.items()}
    for lab in sorted(exact, key=lambda lab: -(exact[lab] - targets[lab]))[: n - sum(targets.values())]:
        targets[lab] += 1  # largest remainders
    return targets


def templated_copy(text: str, rng: np.random.Generator) -> str:
    """A duplicate as users' data has them: wrapped in a greeting and a signature, or with a few words changed."""
    if rng.random() < 0.5:
        return f"{GREETINGS[rng.integers(len(GREETINGS))]} {text} {SIGNATURES[rng.integers(len(SIGNATURES))]}"
    words = text.split()
    for _ in range(3):
        if len(words) < 4:
            break
        i = int(rng.integers(1, len(words)))
        lower = words[i].lower()
        if lower in SWAPS:
            words[i] = SWAPS[lower]
        elif rng.random() < 0.5:
            del words[i]
        else:
            words[i - 1], words[i] = words[i], words[i - 1]
    return " ".join(words)


def off_task_sentences() -> list[str]:
    """Sentences of license texts (8 to 40 words): text from another source, nothing to do with man sections."""
    folder = Path("/usr/share/common-licenses")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()) if folder.is_dir() else []
    files = files or ([OFF_TASK_FALLBACK] if OFF_TASK_FALLBACK.is_file() else [])
    if not files:
        raise BenchmarkError("no off-task text: neither /usr/share/common-licenses nor Python's LICENSE.txt is there")
    out, seen = [], set()
    for path in files:
        for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            for sentence in re.split(r"(?<=[.;])\s+", " ".join(paragraph.split())):
                n = len(sentence.split())
                if 8 <= n <= 40 and sentence not in seen and not sentence.isupper():
                    seen.add(sentence)
                    out.append(sentence)
    return out


def make_noisy(task: Task, seed: int) -> tuple[list[dict[str, str]], list[str], list[str | None], dict[str, Any]]:
    """The noisy pool (as many rows as the clean one), each row's kind and true label (None: off-task), and
    what was planted."""
    rng = np.random.default_rng(seed + 1)
    n = len(task.pool)
    n_dup, n_off = round(DUPLICATE_SHARE * n), round(OFF_TASK_SHARE * n)
    n_real = n - n_dup - n_off
    targets = skewed_targets(task.pool, n_real)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in task.pool:
        by_label.setdefault(row["label"], []).append(row)
    real: list[dict[str, str]] = []
    for label, want in targets.items():
        real += by_label.get(label, [])[:want]
    short = {lab: want - min(want, len(by_label.get(lab, []))) for lab, want in targets.items()}
    for row in task.extra:  # classes the pool has too few of (none, with the down-weighting): more of the same order
        if not any(short.values()):
            break
        if short.get(row["label"], 0) > 0:
            short[row["label"]] -= 1
            real.append(row)
    real = [dict(r) for r in real]
    class_mix = dict(Counter(r["label"] for r in real))
    kinds = ["clean"] * len(real)
    truth: list[str | None] = [r["label"] for r in real]
    for i in rng.choice(len(real), size=round(FLIP_SHARE * len(real)), replace=False):
        others = [lab for lab in task.labels if lab != real[i]["label"]]
        real[i]["label"] = others[int(rng.integers(len(others)))]
        kinds[i] = "flipped"
    rows, kinds = list(real), list(kinds)
    for i in rng.choice(len(real), size=n_dup, replace=n_dup > len(real)):
        rows.append({"text": templated_copy(real[i]["text"], rng), "label": real[i]["label"]})
        kinds.append("duplicate")
        truth.append(truth[i])
    sentences = off_task_sentences()
    for i in rng.choice(len(sentences), size=n_off, replace=n_off > len(sentences)):
        rows.append({"text": sentences[i], "label": task.labels[int(rng.integers(len(task.labels)))]})
        kinds.append("off_task")
        truth.append(None)
    order = rng.permutation(len(rows))
    rows, kinds, truth = [rows[i] for i in order], [kinds[i] for i in order], [truth[i] for i in order]
    planted = {"rows": len(rows), **Counter(kinds), "class_mix": class_mix,
               "natural_mix": dict(Counter(r["label"] for r in task.pool))}
    return rows, kinds, truth, planted


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    lines = (json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n" for r in rows)
    write_text(path, "".join(lines))


# -- running smallset's CLIs ------------------------------------------------------------------


def console_script(name: str) -> str:
    """The installed entry point: the repository's .venv first, then this interpreter's, then PATH."""
    for candidate in (ROOT / ".venv" / "bin" / name, Path(sys.executable).parent / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise BenchmarkError(f"the console script {name!r} is not installed (run `make setup`)")
    return found


@dataclass
class Runner:
    """Runs one CLI call at a time, logs its output under LOGS, stops the benchmark when it fails."""

    logs: Path
    commands: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, name: str, argv: list[str]) -> float:
        self.logs.mkdir(parents=True, exist_ok=True)
        out, err = self.logs / f"{name}.stdout", self.logs / f"{name}.stderr"
        t0 = time.perf_counter()
        with open(out, "w") as fo, open(err, "w") as fe:
            rc = subprocess.run(argv, cwd=ROOT, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL).returncode
        seconds = time.perf_counter() - t0
        self.commands.append({"name": name, "argv": argv, "rc": rc, "seconds": round(seconds, 2)})
        if rc != 0:
            tail = ("\n".join(err.read_text(errors="replace").splitlines()[-25:])
                    or out.read_text(errors="replace")[-2000:])
            raise BenchmarkError(f"{name} failed (exit {rc}): {shlex.join(argv)}\n--- last lines of {err} ---\n{tail}")
        return seconds


def select_args(curate: str) -> list[str]:
    """`select`'s own defaults when it has them (--size auto, stratified by the metric), else --size 1000."""
    text = subprocess.run([curate, "select", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    if "auto" in text and "--metric" in text and "--test" in text:
        return ["--size", "auto", "--metric", "accuracy"]  # --test is added with the test file
    return ["--size", "1000"]


def step_argv(step: str, curate: str, source: Path, out: Path, test: Path, labels: list[str],
              select: list[str]) -> list[str]:
    """One curation step as the recipe's defaults run it."""
    head = [curate, step, str(source), "-o", str(out)]
    if step == "dedup":
        return [*head, "--method", "exact", "--method", "near", "--method", "semantic"]
    if step == "decontaminate":
        return [*head, "--against", str(test)]
    if step == "filter":
        return [*head, "--labels", ",".join(labels)]
    if step == "check-labels":
        return head
    if step == "select":
        return [*head, *select, *(["--test", str(test)] if "auto" in select else [])]
    raise ValueError(step)


def chain_of(arm: str) -> tuple[str, ...]:
    if arm == "raw":
        return ()
    if arm in ("curated", *REVIEW_ARMS):
        return STEPS
    return tuple(s for s in STEPS if s != arm.removeprefix("no-"))


def count_rows(path: Path) -> int:
    return pl.scan_parquet(path).select(pl.len()).collect().item()


def user_texts(path: Path) -> list[str]:
    messages = pl.read_parquet(path, columns=["messages"])["messages"].to_list()
    return [next((m["content"] for m in turns if m["role"] == "user"), "") for turns in messages]


@dataclass
class Version:
    """One version of the pool: its files, its curation steps (computed once, shared by the arms), its planted noise."""

    name: str
    pool: Path
    test: Path
    labels: list[str]
    work: Path
    kinds: dict[str, str] | None = None  # noisy: text -> planted kind
    truth: dict[str, str | None] = field(default_factory=dict)  # text -> true label (None: off-task)
    steps: dict[tuple[str, ...], tuple[Path, float]] = field(default_factory=dict)

    def curated_data(self, chain: tuple[str, ...], run: Runner, curate: str, select: list[str]) -> tuple[Path, float]:
        """The ingested pool after `chain`, reusing every prefix already computed; and the curation seconds."""
        if () not in self.steps:
            out = self.work / "steps" / "ingest.parquet"
            seconds = run(f"{self.name}.ingest", [curate, "ingest", str(self.pool), "-o", str(out)])
            self.steps[()] = (out, seconds)
        for k in range(1, len(chain) + 1):
            prefix = chain[:k]
            if prefix not in self.steps:
                source, before = self.steps[prefix[:-1]]
                out = self.work / "steps" / ("ingest+" + "+".join(prefix) + ".parquet")
                seconds = run(f"{self.name}.{'+'.join(prefix)}",
                              step_argv(prefix[-1], curate, source, out, self.test, self.labels, select))
                print(f"    {prefix[-1]:<14} {count_rows(source):>6} -> {count_rows(out):>6} rows  {seconds:6.1f} s")
                self.steps[prefix] = (out, before + seconds)
        return self.steps[chain]

    def after_review(self, data: Path, arm: str) -> tuple[Path, int, dict[str, int]]:
        """The curated rows after the review stage of `arm`: flagged rows left out (pending), or decided by the
        simulated annotator (reviewed); the rows a person reads and the decisions."""
        df = pl.read_parquet(data)
        mask = df.select(is_flagged(df).alias("f"))["f"].to_list()
        out = data.with_name(data.name.removesuffix(".parquet") + f"+{arm}.parquet")
        if arm == "pending":
            kept = df.filter(~pl.Series(mask))
            decisions = {"pending": sum(mask)}
        else:
            keep, labels, messages, decisions = [], [], [], Counter()
            for row, read in zip(df.iter_rows(named=True), mask):
                text = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
                true = self.truth.get(text, row["label"]) if read else row["label"]
                turns = [dict(m) for m in row["messages"]]
                if not read:
                    decision = None
                elif true is None:
                    decision = "rejected"
                elif true != row["label"]:
                    decision = "corrected"
                    for m in turns:
                        if m["role"] == "assistant" and m["content"] == row["label"]:
                            m["content"] = true
                else:
                    decision = "accepted"
                if decision:
                    decisions[decision] += 1
                keep.append(decision != "rejected")
                labels.append(true if decision == "corrected" else row["label"])
                messages.append(turns)
            kept = df.with_columns(pl.Series("label", labels, dtype=pl.String),
                                   pl.Series("messages", messages, dtype=df.schema["messages"])).filter(pl.Series(keep))
            decisions = dict(decisions)
        kept.write_parquet(out)
        return out, sum(mask), decisions

    def noise_left(self, data: Path) -> dict[str, str] | None:
        """How much of each planted kind of noise is still in the training data (noisy version)."""
        if self.kinds is None:
            return None
        planted = Counter(self.kinds.values())
        labels = pl.read_parquet(data, columns=["label"])["label"].to_list()
        left = Counter()
        for text, label in zip(user_texts(data), labels):
            kind = self.kinds.get(text, "clean")
            if kind == "flipped" and label == self.truth.get(text):
                continue  # a flipped label a reviewer corrected is no longer noise
            left[kind] += 1
        return {k: f"{left[k]}/{planted[k]}" for k in ("flipped", "duplicate", "off_task")}


def run_arm(version: Version, arm: str, run: Runner, tools: dict[str, str], select: list[str],
            epochs: int, lr: float | None, seed: int) -> dict[str, Any]:
    """Curate (from the shared steps), train, evaluate on the common test set and k-shot pool; a line of timing."""
    t0 = time.perf_counter()
    data, curate_seconds = version.curated_data(chain_of(arm), run, tools["curate"], select)
    read, decisions = 0, None
    if arm in REVIEW_ARMS:
        data, read, decisions = version.after_review(data, arm)
        print(f"    review ({arm}): {read} flagged rows {'left out' if arm == 'pending' else 'read'}: {decisions}")
    folder = version.work / "arms" / arm
    if folder.exists():
        shutil.rmtree(folder)
    wall_train = run(f"{version.name}.{arm}.train", [tools["train"], "lora", str(data), "-o", str(folder / "train"),
                                                      "--epochs", str(epochs), *(["--lr", str(lr)] if lr else []),
                                                      "--seed", str(seed), "--quiet"])
    manifest = json.loads((folder / "train" / "adapter.manifest.json").read_text())
    wall_eval = run(f"{version.name}.{arm}.eval", [
        tools["train"], "eval", str(folder / "train"), "--test", str(version.test), "--shots-from", str(version.pool),
        "--metric", "accuracy", "--target", "0.5", "--seed", str(seed), "-o", str(folder / "eval"), "--quiet"])
    report = json.loads((folder / "eval" / "eval.json").read_text())
    predictions = pl.read_parquet(folder / "eval" / "predictions.parquet")
    result = {
        "arm": arm, "steps": list(chain_of(arm)), "data": str(data), "train_rows": count_rows(data),
        "train_seconds": float(manifest.get("metrics", {}).get("train_seconds", wall_train)),
        "train_wall_seconds": round(wall_train, 2), "curate_seconds": round(curate_seconds, 2),
        "eval_wall_seconds": round(wall_eval, 2), "labels": report.get("labels") or version.labels,
        "reported": {k: report["results"]["adapter"].get(k) for k in METRICS},
        "kshot_reported": {k: report["results"]["kshot"].get(k) for k in METRICS},
        "shots": report.get("shots"), "noise_left": version.noise_left(data),
        "review": {"flagged": read, "decisions": decisions} if arm in REVIEW_ARMS else None,
        "predictions": {c: predictions.filter(pl.col("contender") == c).sort("row")
                        .select("row", "gold", "prediction").to_dicts() for c in ("adapter", "kshot", "base")},
    }
    print(f"  [{version.name}] {arm:<18} {result['train_rows']:>5} rows  curate {curate_seconds:6.1f} s  "
          f"train {wall_train:6.1f} s (optimizer {result['train_seconds']:.1f} s)  eval {wall_eval:6.1f} s  "
          f"accuracy {result['reported']['accuracy']:.3f}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return result


# -- statistics and the table -----------------------------------------------------------------


def summarize(version: str, results: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Intervals on one set of resampled test rows, differences from raw paired, the k-shot baseline, the verdict."""
    first = results[0]
    gold = [p["gold"] for p in first["predictions"]["adapter"]]
    labels = first["labels"]
    draws = resample_indices(len(gold), seed=seed)
    by_arm = {r["arm"]: r for r in results}
    raw = by_arm.get("raw")
    rows = []
    for r in results:
        if [p["gold"] for p in r["predictions"]["adapter"]] != gold:
            raise BenchmarkError(f"{version}: arm {r['arm']} was scored on other test rows")
        pred = [p["prediction"] for p in r["predictions"]["adapter"]]
        row = {k: r[k] for k in ("arm", "steps", "train_rows", "train_seconds", "train_wall_seconds", "curate_seconds",
                                 "eval_wall_seconds", "noise_left", "review")}
        for metric in METRICS:
            row[metric] = interval(TASK, metric, gold, pred, labels, draws=draws)
            for ref_name, ref in (("raw", raw), ("curated", by_arm.get("curated"))):
                if ref is not None and ref is not r:
                    other = [p["prediction"] for p in ref["predictions"]["adapter"]]
                    row[f"{metric}_vs_{ref_name}"] = paired_difference(TASK, metric, gold, pred, other, labels,
                                                                       draws=draws)
        rows.append(row)
    kshots = {json.dumps([p["prediction"] for p in r["predictions"]["kshot"]]) for r in results}
    baselines = {c: {m: interval(TASK, m, gold, [p["prediction"] for p in first["predictions"][c]], labels, draws=draws)
                     for m in METRICS} for c in ("kshot", "base")}
    return {"version": version, "test_rows": len(gold), "labels": labels, "arms": rows, "baselines": baselines,
            "kshot_identical": len(kshots) == 1, "verdict": verdict(version, {r["arm"]: r for r in rows})}


def verdict(version: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's target for the curated arm; the same test for the review arms, under `by_arm`."""
    raw = rows.get("raw")
    judged = {arm: _verdict(version, rows[arm], raw, arm) for arm in ("curated", *REVIEW_ARMS)
              if arm in rows and raw is not None}
    if "curated" not in judged:
        return {"met": None, "why": "needs the raw and the curated arms", "by_arm": judged}
    return {**judged["curated"], "by_arm": judged}


def _verdict(version: str, arm: dict[str, Any], raw: dict[str, Any], name: str) -> dict[str, Any]:
    acc, f1 = arm["accuracy_vs_raw"], arm["macro_f1_vs_raw"]
    if version == "clean":
        met = acc["high"] >= 0 and f1["high"] >= 0
        why = (f"{name} vs raw: accuracy {pts(acc)}, macro-F1 {pts(f1)}; target: neither interval wholly below 0 "
               f"({name} never worse than raw beyond the CI)")
        return {"met": bool(met), "why": why}
    small = arm["train_rows"] <= NOISY_MAX_ROWS
    better = acc["low"] > 0
    faster = arm["train_seconds"] < raw["train_seconds"]
    why = (f"{name} trains on {arm['train_rows']} rows (target <= {NOISY_MAX_ROWS}: {'yes' if small else 'no'}); "
           f"accuracy vs raw {pts(acc)} (target: interval above 0: {'yes' if better else 'no'}); training "
           f"{arm['train_seconds']:.1f} s vs raw {raw['train_seconds']:.1f} s (less: {'yes' if faster else 'no'})")
    return {"met": bool(small and better and faster), "why": why}


def pct(ci: dict[str, float]) -> str:
    return f"{100 * ci['value']:5.1f} [{100 * ci['low']:5.1f}, {100 * ci['high']:5.1f}]"


def pts(d: dict[str, float]) -> str:
    return f"{100 * d['value']:+5.1f} [{100 * d['low']:+5.1f}, {100 * d['high']:+5.1f}]"


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    noisy = any(r["noise_left"] for r in summary["arms"])
    table = Table(title=f"{summary['version']}: {summary['test_rows']} test rows, {len(summary['labels'])} labels; "
                        "metrics in %, 95% bootstrap intervals; differences paired")
    for col in ("arm", "train rows", "accuracy", "macro-F1", "acc. vs raw", "F1 vs raw", "train s", "curate s",
                "rows read", *(["noise left (flip, dup, off-task)"] if noisy else [])):
        table.add_column(col, justify="left" if col in ("arm",) else "right")
    for r in summary["arms"]:
        diff = [pts(r[f"{m}_vs_raw"]) if f"{m}_vs_raw" in r else "" for m in METRICS]
        left = r["noise_left"]
        table.add_row(r["arm"], str(r["train_rows"]), pct(r["accuracy"]), pct(r["macro_f1"]), *diff,
                      f"{r['train_seconds']:.1f}", f"{r['curate_seconds']:.1f}",
                      str(r["review"]["flagged"]) if r["review"] and r["arm"] == "reviewed" else "",
                      *([", ".join(left.values()) if left else ""] if noisy else []))
    Console(width=200).print(table)
    b = summary["baselines"]
    same = "identical for every arm" if summary["kshot_identical"] else "WARNING: differs between arms"
    print(f"base k-shot: accuracy {pct(b['kshot']['accuracy'])}, macro-F1 {pct(b['kshot']['macro_f1'])} ({same}); "
          f"base zero-shot: accuracy {pct(b['base']['accuracy'])}")
    for r in summary["arms"]:
        if r["arm"].startswith("no-") and "accuracy_vs_curated" in r:
            d = r["accuracy_vs_curated"]
            effect = ("no clear effect" if not d["significant"] else
                      "the step helped" if d["value"] < 0 else "the step hurt")
            print(f"  without {r['arm'][3:]}: accuracy vs curated {pts(d)} -> {effect}")
    for arm, v in (summary["verdict"].get("by_arm") or {"curated": summary["verdict"]}).items():
        mark = "n/a" if v["met"] is None else "MET" if v["met"] else "NOT MET"
        print(f"verdict ({summary['version']}, {arm}): {mark}: {v['why']}")
    print()


# -- main -------------------------------------------------------------------------------------


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=2000, help="rows in the training pool (default 2000)")
    parser.add_argument("--test-size", type=int, default=300, help="held-out test rows (default 300)")
    parser.add_argument("--versions", type=lambda v: parse_list(v, VERSIONS, "version"), default=list(VERSIONS),
                        help="comma-separated: clean,noisy (default both)")
    parser.add_argument("--arms", type=lambda v: parse_list(v, ARMS, "arm"), default=list(ARMS),
                        help=f"comma-separated, from {','.join(ARMS)} (default all)")
    parser.add_argument("--epochs", type=int, default=1, help="train lora --epochs for every arm (default 1)")
    parser.add_argument("--lr", type=float, help="train lora --lr for every arm (default: train lora's own)")
    parser.add_argument("--workdir", type=Path,
                        help="where data, steps, adapters and logs go (default a new temp folder, kept)")
    parser.add_argument("--seed", type=int, default=0,
                        help="data sampling, noise, training, shots and bootstrap (default 0)")
    parser.add_argument("--json", type=Path, help="also write the tables and verdicts here as JSON")
    args = parser.parse_args(argv)
    if args.pool < 20 or args.test_size < 10:
        parser.error("--pool must be at least 20 and --test-size at least 10")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.lr is not None and args.lr <= 0:
        parser.error("--lr must be above 0")
    try:
        return run_benchmark(args)
    except BenchmarkError as exc:
        print(f"\nbenchmark stopped: {exc}", file=sys.stderr)
        return 1


def run_benchmark(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="smallset-evidence-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {work} (kept)")
    tools = {name: console_script(name) for name in ("curate", "train")}
    select = select_args(tools["curate"])
    print(f"curate select: {' '.join(select)}{' --test TEST' if 'auto' in select else ''}")

    task = build_task(args.pool, args.test_size, args.seed)
    data = work / "data"
    test = data / "test.jsonl"
    write_jsonl(test, task.test)
    print(f"task: {task.source}; {len(task.pool)} pool rows, {len(task.test)} test rows, labels: "
          + ", ".join(f"{lab} {n}" for lab, n in Counter(r["label"] for r in task.pool).most_common()))
    run = Runner(work / "logs")
    summaries = []
    for name in args.versions:
        pool = data / f"{name}.pool.jsonl"
        kinds, truth = None, {}
        if name == "clean":
            write_jsonl(pool, task.pool)
        else:
            rows, row_kinds, row_truth, planted = make_noisy(task, args.seed)
            truth = {r["text"]: t for r, t in zip(rows, row_truth)}
            write_jsonl(pool, rows)
            write_text(data / "noisy.planted.json", json.dumps(planted, indent=2) + "\n")
            kinds = {r["text"]: k for r, k in zip(rows, row_kinds) if k != "clean"}
            print(f"noisy pool: {planted.get('flipped', 0)} flipped labels, {planted.get('duplicate', 0)} templated "
                  f"duplicates, {planted.get('off_task', 0)} off-task rows; class mix "
                  + ", ".join(f"{lab} {n}" for lab, n in sorted(planted["class_mix"].items(), key=lambda kv: -kv[1])))
        version = Version(name, pool, test, task.labels, work / name, kinds, truth)
        print(f"[{name}] {len(args.arms)} arms")
        results = [run_arm(version, arm, run, tools, select, args.epochs, args.lr, args.seed) for arm in args.arms]
        summary = summarize(name, results, args.seed)
        print()
        print_table(summary)
        summaries.append(summary)
    wall = time.perf_counter() - t_start
    print(f"wall time: {wall:.0f} s")
    if args.json:
        parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        doc = {"source": task.source, "parameters": parameters,
               "workdir": str(work), "select": select, "wall_seconds": round(wall, 1), "versions": summaries,
               "commands": run.commands}
        write_text(args.json, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
