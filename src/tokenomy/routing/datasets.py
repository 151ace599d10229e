"""Routing evaluation data: prompts with each candidate model's outcome and cost.

Readers for the formats the learned router trains on:

- RouterBench CSV (``*.csv`` / ``*.csv.gz``): a ``prompt`` column (often a Python
  list literal of strings), one 0/1 correctness column per model and one
  ``<model>|total_cost`` column per model (USD);
- RouteLLM GSM8K responses (``prompt`` plus one True/False column per model);
- RouteLLM MT-Bench (``judgements.jsonl[.gz]`` beside ``question.jsonl[.gz]``):
  GPT-4 judge scores 1–10, turned into quality in [0, 1];
- the gateway's own feedback log (JSONL: ``{"prompt", "model", "quality", "cost_usd"}``
  one line per (prompt, model) outcome).

Everything is loaded into one :class:`RoutingDataset`: ``quality[i, j]`` and
``cost[i, j]`` for prompt ``i`` and model ``j``. The data files are not shipped
with the package.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Approximate list prices (USD per 1M input/output tokens) for the RouteLLM pair,
#: used to turn its two-model data (which has no costs) into a cost per query.
ROUTELLM_PRICES = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6),
}


@dataclass
class RoutingDataset:
    name: str
    prompts: list[str]
    models: list[str]
    quality: np.ndarray  # (n, m) in [0, 1]
    cost: np.ndarray  # (n, m) USD per query

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: np.ndarray) -> RoutingDataset:
        return RoutingDataset(
            self.name, [self.prompts[i] for i in index], self.models, self.quality[index], self.cost[index]
        )

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple[RoutingDataset, RoutingDataset]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self))
        cut = int(round(len(self) * (1 - test_fraction)))
        return self.subset(np.sort(order[:cut])), self.subset(np.sort(order[cut:]))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return path.open(encoding="utf-8")


def _prompt(value: str) -> str:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        try:
            parts = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parts, list):
            return "\n\n".join(str(p) for p in parts)
    return value


def load(path: str | Path) -> RoutingDataset:
    """Load any supported format, chosen from the file's name and header."""
    path = Path(path)
    if path.is_dir():
        judgements = [p for p in path.iterdir() if p.name.startswith("judgements.jsonl")]
        if judgements:
            return load_mtbench(judgements[0])
        raise ValueError(f"{path}: no judgements.jsonl[.gz] in this directory")
    if path.name.startswith("judgements.jsonl"):
        return load_mtbench(path)
    if ".jsonl" in path.name:
        return load_feedback(path)
    with _open_text(path) as fh:
        header = next(csv.reader(fh))
    if any(col.endswith("|total_cost") for col in header):
        return load_routerbench(path)
    return load_two_model_csv(path)


def load_routerbench(path: str | Path) -> RoutingDataset:
    path = Path(path)
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        models = [f.split("|")[0] for f in fields if f.endswith("|total_cost")]
        prompts, quality, cost = [], [], []
        for row in reader:
            prompts.append(_prompt(row["prompt"]))
            quality.append([float(row[m] or 0) for m in models])
            cost.append([float(row[m + "|total_cost"] or 0) for m in models])
    name = path.name.split(".")[0].removeprefix("routerbench_")
    return RoutingDataset(name, prompts, models, np.array(quality), np.array(cost))


def _approx_cost(model: str, prompt: str, answer: str) -> float:
    price_in, price_out = ROUTELLM_PRICES.get(model, (1.0, 1.0))
    return (len(prompt) / 4 * price_in + len(answer) / 4 * price_out) / 1e6


def load_two_model_csv(path: str | Path) -> RoutingDataset:
    """RouteLLM's ``gsm8k_responses.csv``: ``prompt``, ``<model>`` (True/False), ``<model>_response``."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        models = [f for f in fields if f != "prompt" and not f.endswith("_response")]
        prompts, quality, cost = [], [], []
        for row in reader:
            prompts.append(row["prompt"])
            quality.append([1.0 if row[m].strip().lower() in ("true", "1", "1.0") else 0.0 for m in models])
            cost.append([_approx_cost(m, row["prompt"], row.get(m + "_response", "")) for m in models])
    name = path.name.split(".")[0]
    return RoutingDataset(name, prompts, models, np.array(quality), np.array(cost))


def load_mtbench(path: str | Path) -> RoutingDataset:
    """MT-Bench judgements (GPT-4 scores 1–10 per turn), quality = mean score / 10."""
    path = Path(path)
    qpath = next(path.parent.glob("question.jsonl*"))
    questions: dict[int, str] = {}
    with _open_text(qpath) as fh:
        for line in fh:
            q = json.loads(line)
            questions[q["question_id"]] = q["turns"][0]
    scores: dict[tuple[int, str], list[float]] = defaultdict(list)
    models: list[str] = []
    with _open_text(path) as fh:
        for line in fh:
            j = json.loads(line)
            if j.get("score", -1) < 0:
                continue
            scores[(j["question_id"], j["model"])].append(float(j["score"]))
            if j["model"] not in models:
                models.append(j["model"])
    ids = sorted(q for q in questions if all((q, m) in scores for m in models))
    quality = np.array([[np.mean(scores[(q, m)]) / 10.0 for m in models] for q in ids])
    cost = np.array([[_approx_cost(m, questions[q], "x" * 2000) for m in models] for q in ids])
    return RoutingDataset("mtbench", [questions[q] for q in ids], models, quality, cost)


def load_feedback(path: str | Path) -> RoutingDataset:
    """The gateway's feedback log: one JSON line per (prompt, model) outcome."""
    path = Path(path)
    by_prompt: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    models: list[str] = []
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            by_prompt[r["prompt"]][r["model"]] = (float(r["quality"]), float(r.get("cost_usd") or 0.0))
            if r["model"] not in models:
                models.append(r["model"])
    prompts = [p for p, d in by_prompt.items() if len(d) == len(models)]
    quality = np.array([[by_prompt[p][m][0] for m in models] for p in prompts])
    cost = np.array([[by_prompt[p][m][1] for m in models] for p in prompts])
    return RoutingDataset(path.name.split(".")[0], prompts, models, quality, cost)
