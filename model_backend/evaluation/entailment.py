"""RadFact-style logical precision/recall with an LLM judge behind any OpenAI-compatible chat endpoint.

RadFact (microsoft/RadFact, `llm_utils/nli`) verifies entailment one phrase at a time: a
hypothesis sentence is judged against the whole other report (the premise, a list of
sentences), and the answer is a status with evidence, the premise sentences that support it.
Both ways: generated sentences against the reference report (logical precision), reference
sentences against the generated report (logical recall); per study the fraction entailed, over
a dataset the mean of the per-study fractions (RadFact's nanmean). Sentences: a generated
report's findings, and the manifest's `reference_findings` items as given.

The judge answers JSON {"status": "entailment" | "not_entailment", "evidence": [...]}; RadFact's
three-way states are read as it reads them (contradiction and neutral are not entailed), and as in
RadFact an entailment without evidence is invalid. Unlike RadFact, a failure (HTTP error,
timeout, an answer that is not such JSON) is never counted as "not entailed": it is counted in
`n_entailment_failures` and left out of both fractions. An empty premise entails nothing (no call).

Answers are cached per (model, premise sentences, hypothesis) in a JSONL file, so a rerun only
asks what it has not asked before; failures are not cached and are retried by the next run. The
API key is read from an environment variable and sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ENTAILED, NOT_ENTAILED = "entailment", "not_entailment"
_STATUSES = {ENTAILED: True, NOT_ENTAILED: False, "contradiction": False, "neutral": False}
SYSTEM_PROMPT = (
    "You check statements about a chest X-ray against a reference report. The user sends JSON with "
    '"reference" (the reference report as a list of sentences) and "hypothesis" (one statement). '
    "The hypothesis is entailed when the reference report states or implies everything it says; "
    "otherwise it is not entailed (contradicted, or not mentioned). Reply with JSON only: "
    '{"status": "entailment" or "not_entailment", "evidence": [the reference sentences your decision rests on]}. '
    "An entailed hypothesis always has evidence."
)
Query = tuple[tuple[str, ...], str]  # (premise sentences, hypothesis)


class JudgeError(RuntimeError):
    """The endpoint did not give a usable answer for one query."""


@dataclass(frozen=True)
class Judgement:
    """One hypothesis judged against one premise report."""

    entailed: bool
    evidence: tuple[str, ...]


def parse_answer(content: str) -> Judgement:
    """A chat answer -> `Judgement`; `JudgeError` unless it holds the JSON object asked for."""
    match = re.search(r"\{.*\}", content, re.DOTALL)
    try:
        answer = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise JudgeError(f"answer is not a JSON object: {content[:80]!r}")
    status = str(answer.get("status", "")).strip().lower()
    evidence = answer.get("evidence", [])
    if status not in _STATUSES or not isinstance(evidence, list):
        raise JudgeError(f"answer has no valid status/evidence: {content[:80]!r}")
    if _STATUSES[status] and not evidence:
        raise JudgeError("an entailed hypothesis without evidence")
    return Judgement(_STATUSES[status], tuple(str(e) for e in evidence))


class EntailmentJudge:
    """Chat-completions client with a JSONL answer cache; thread-safe, `judge_many` runs queries in parallel."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        cache_path: Path | None = None,
        timeout: float = 60.0,
        retries: int = 1,
        workers: int = 4,
    ) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.cache_path = cache_path
        self.timeout, self.retries, self.workers = timeout, retries, workers
        self.n_requests = self.n_cached = 0
        self._lock = threading.Lock()
        self._cache: dict[str, Judgement] = {}
        if cache_path is not None and cache_path.exists():
            for line in cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by an interrupted run: asked again
                self._cache[record["key"]] = Judgement(record["entailed"], tuple(record["evidence"]))

    def _key(self, premise: Sequence[str], hypothesis: str) -> str:
        payload = json.dumps([self.model, list(premise), hypothesis])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _ask(self, premise: Sequence[str], hypothesis: str) -> Judgement:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": json.dumps({"reference": list(premise), "hypothesis": hypothesis})},
            ],
        }
        error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt, 30.0))
            with self._lock:
                self.n_requests += 1
            try:
                response = requests.post(self.url, json=body, headers=self.headers, timeout=self.timeout)
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                try:
                    return parse_answer(response.json()["choices"][0]["message"]["content"])
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise JudgeError(f"unusable answer: {exc}") from exc
            error = f"HTTP {response.status_code}: {response.text[:80]}"
            if response.status_code < 500 and response.status_code != 429:
                break  # a client error (bad key, bad request) does not go away by asking again
        raise JudgeError(error)

    def judge(self, premise: Sequence[str], hypothesis: str) -> Judgement:
        """Is `hypothesis` entailed by the premise report? Cached; `JudgeError` on failure."""
        if not premise:
            return Judgement(False, ())
        key = self._key(premise, hypothesis)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self.n_cached += 1
                return cached
        judgement = self._ask(premise, hypothesis)
        with self._lock:
            self._cache[key] = judgement
            if self.cache_path is not None:
                record = {"key": key, "model": self.model, "premise": list(premise), "hypothesis": hypothesis}
                record.update(entailed=judgement.entailed, evidence=list(judgement.evidence))
                with self.cache_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
        return judgement

    def judge_many(self, queries: Sequence[Query]) -> dict[Query, Judgement | JudgeError]:
        """Every distinct query judged (in parallel); failures come back as `JudgeError` values."""

        def run(query: Query) -> Judgement | JudgeError:
            try:
                return self.judge(*query)
            except JudgeError as exc:
                return exc

        distinct = list(dict.fromkeys(queries))
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return dict(zip(distinct, pool.map(run, distinct), strict=True))


def _fraction(results: list[Judgement | JudgeError]) -> tuple[float | None, int]:
    """(entailed / judged, failures) of one direction; None when nothing was judged."""
    judged = [r for r in results if isinstance(r, Judgement)]
    return (sum(r.entailed for r in judged) / len(judged) if judged else None), len(results) - len(judged)


def add_logical_scores(rows: list[dict[str, Any]], judge: EntailmentJudge) -> None:
    """Add `logical_precision`, `logical_recall`, `n_entailment_judgements`, `n_entailment_failures` to
    rows with reference sentences (None / 0 elsewhere)."""
    plans = []
    for row in rows:
        generated = tuple(s for s in row["generated_sentences"] if s.strip())
        reference = tuple(s for s in row["reference_sentences"] if s.strip())
        if not reference:
            plans.append(None)
            continue
        precision = [(reference, s) for s in generated]
        recall = [(generated, s) for s in reference]
        plans.append((precision, recall))
    answers = judge.judge_many([q for plan in plans if plan for part in plan for q in part])
    for row, plan in zip(rows, plans, strict=True):
        if plan is None:
            row.update(logical_precision=None, logical_recall=None, n_entailment_judgements=0, n_entailment_failures=0)
            continue
        precision, failed_p = _fraction([answers[q] for q in plan[0]])
        recall, failed_r = _fraction([answers[q] for q in plan[1]])
        row.update(
            logical_precision=precision,
            logical_recall=recall,
            n_entailment_judgements=len(plan[0]) + len(plan[1]),
            n_entailment_failures=failed_p + failed_r,
        )
