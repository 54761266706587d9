"""Text-side retrieval: score a model's text embeddings alone, queries against documents.

A locked text tower promises that the text side of a trained model directory is the text model,
unchanged. `check-compat` checks that on a few probe texts, bit for bit; this benchmark puts a
number on it that sits beside the image tasks (the role MTEB plays in Nomic's table): the score
of a model directory must equal the score of its text model alone.

A task file (`task.json`, written by `data.wordnet` or by hand) holds::

    {"name": "...", "query_task_type": "search_query", "document_task_type": "search_document",
     "queries": [{"text": "...", "relevant": [0, 3]}, ...],   # indices into documents
     "documents": ["...", ...]}

Every query has at least one relevant document. Queries are embedded with the query task type and
documents with the document task type, so a model with prefixes (`search_query: `) is used the way
it was trained for asymmetric search.

Metrics, per query, from the rank of its first relevant document (ties count against the model,
as everywhere in `eval.metrics`):
- `recall@k`: the share of queries with a relevant document in the top k (a query is answered by
  any of its relevant documents, as CLIP_benchmark's text_retrieval_recall counts any caption);
- `mrr`: the mean of 1 / rank, the main metric: it uses the whole ranking, so it moves less by
  chance than recall@1 on a few thousand queries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from latentspace.eval.metrics import RECALL_KS, miss_probability, negatives_above_best_relevant
from latentspace.eval.runner import TaskResult
from latentspace.models.embedder import Embeds

TEXT_RETRIEVAL = "text_retrieval"
MAIN_METRIC = "mrr"
TASK_FILE = "task.json"


@dataclass
class TextRetrievalTask:
    name: str
    queries: list[str]
    documents: list[str]
    relevant: list[list[int]]  # per query, indices into documents
    query_task_type: str = "search_query"
    document_task_type: str = "search_document"


def load_text_task(path: str | Path) -> TextRetrievalTask:
    """Read and check a task file (or the directory holding `task.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / TASK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no text-retrieval task at {path}; build the WordNet one with `latentspace data wordnet` (or pass `auto`)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        documents = [str(d) for d in raw["documents"]]
        queries = [str(q["text"]) for q in raw["queries"]]
        relevant = [[int(i) for i in q["relevant"]] for q in raw["queries"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a text-retrieval task file ({err!r}); rebuild it") from err
    if not queries or not documents:
        raise ValueError(f"{path}: a task needs at least one query and one document")
    for number, indices in enumerate(relevant):
        if not indices or any(not 0 <= i < len(documents) for i in indices):
            raise ValueError(f"{path}: query {number} needs relevant document indices in [0, {len(documents)})")
    return TextRetrievalTask(
        name=str(raw.get("name", path.parent.name)),
        queries=queries,
        documents=documents,
        relevant=relevant,
        query_task_type=str(raw.get("query_task_type", "search_query")),
        document_task_type=str(raw.get("document_task_type", "search_document")),
    )


@torch.no_grad()
def evaluate_text_retrieval(model: Embeds, task: TextRetrievalTask, *, batch_size: int = 256) -> TaskResult:
    """Embed queries and documents with the model's text side and score the rankings."""
    start = time.perf_counter()
    queries = embed_by_length(model, task.queries, task.query_task_type, batch_size)
    documents = embed_by_length(model, task.documents, task.document_task_type, batch_size)
    ranks = negatives_above_best_relevant(queries, documents, task.relevant)
    return TaskResult(
        name=task.name,
        type=TEXT_RETRIEVAL,
        main_metric=MAIN_METRIC,
        metrics=ranking_metrics(ranks),
        chance=ranking_chance(len(task.documents), [len(r) for r in task.relevant]),
        n_samples=len(task.queries),
        n_skipped=0,
        seconds=time.perf_counter() - start,
    )


def embed_by_length(model: Embeds, texts: Sequence[str], task_type: str, batch_size: int) -> torch.Tensor:
    """Embed in batches of similar length, returned in the input order.

    A batch is padded to its longest text; WordNet definitions run from 2 to 60+ tokens, so batching
    them as they come wastes most of the compute on padding. The order depends only on the texts, so
    every model sees the same batches.
    """
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    vectors = [model.embed_texts([texts[i] for i in chunk], task_type=task_type) for chunk in chunks]
    sorted_rows = F.normalize(torch.cat(vectors).detach().float().cpu(), dim=-1)
    rows = torch.empty_like(sorted_rows)
    rows[torch.tensor(order)] = sorted_rows
    return rows


def ranking_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """recall@k and MRR from each query's count of non-relevant documents above its first relevant one."""
    metrics = {f"recall@{k}": (ranks < k).float().mean().item() for k in RECALL_KS}
    metrics[MAIN_METRIC] = (1.0 / (ranks.double() + 1)).mean().item()
    return metrics


def ranking_chance(n_documents: int, n_relevant: Sequence[int]) -> dict[str, float]:
    """Expected metrics when documents are ranked at random, averaged over the queries
    (each query's chance depends on how many relevant documents it has)."""
    per_query = [_chance_for(n_documents, r) for r in n_relevant]
    return {key: sum(c[key] for c in per_query) / len(per_query) for key in per_query[0]}


@cache
def _chance_for(n: int, r: int) -> dict[str, float]:
    """r relevant among n in random order. recall@k = 1 - P(the top k are all non-relevant);
    MRR = sum over j of P(first relevant at rank j) / j, with P(first relevant after rank j) =
    P(the top j all miss)."""
    chance = {f"recall@{k}": 1 - miss_probability(n, r, k) for k in RECALL_KS}
    mrr, all_missed = 0.0, 1.0
    for j in range(1, n - r + 2):
        missed_next = all_missed * max(0.0, (n - r - (j - 1)) / (n - (j - 1)))
        mrr += (all_missed - missed_next) / j
        all_missed = missed_next
    chance[MAIN_METRIC] = mrr
    return chance
