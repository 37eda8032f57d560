"""Start-up self-test of the reranker: a clearly relevant document must outscore a clearly irrelevant one.

Qwen3-Reranker scores close to random when the prompt template is missing or applied twice, so a wrong
`reranker.prompt_format` shows up here as relevant and irrelevant documents scoring alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import RerankerConfig, redact_url
from ..errors import RerankerError
from .scoring import ScoreClient

log = logging.getLogger(__name__)

# (query, relevant document, irrelevant document): unambiguous for any competent relevance model.
PROBES: tuple[tuple[str, str, str], ...] = (
    (
        "photosynthesis in green plants",
        "Title: Photosynthesis\nAbstract: How green plants use chlorophyll to turn sunlight, water and "
        "carbon dioxide into glucose and oxygen.",
        "Title: Medieval trade routes\nAbstract: Merchants, caravans and the silk road between Europe "
        "and Asia.",
    ),
    (
        "history of the Roman empire",
        "Title: The rise and fall of Rome\nAbstract: A history of the Roman empire from Augustus to the fall "
        "of the western empire.",
        "Title: Sourdough baking\nAbstract: Flour, water and a starter culture: a practical guide to bread.",
    ),
    (
        "machine learning for medical imaging",
        "Title: Deep learning in radiology\nAbstract: Convolutional neural networks detect tumours in CT and "
        "MRI scans of patients.",
        "Title: Baroque music\nAbstract: Bach, Handel and the development of the fugue in the 18th century.",
    ),
    (
        "免疫系统如何对抗病毒",
        "Title: 免疫应答\nAbstract: 人体免疫系统通过抗体和T细胞识别并清除病毒感染。",
        "Title: 园林设计\nAbstract: 中国古典园林的假山、池塘与亭台布局。",
    ),
)
# Real rerankers separate these pairs by far more; random scores rarely order all four pairs and
# separate their means by this much.
MIN_MEAN_MARGIN = 0.2


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    ok: bool
    detail: str


def judge(pairs: Sequence[tuple[float, float]], min_margin: float = MIN_MEAN_MARGIN) -> SelfTestResult:
    """Pass when every relevant score beats its irrelevant twin and the means are `min_margin` apart."""
    if not pairs:
        return SelfTestResult(False, "no probe was scored")
    ordered = sum(1 for relevant, irrelevant in pairs if relevant > irrelevant)
    margin = sum(relevant - irrelevant for relevant, irrelevant in pairs) / len(pairs)
    detail = f"{ordered}/{len(pairs)} relevant documents outscored irrelevant ones, mean margin {margin:.3f}"
    return SelfTestResult(ordered == len(pairs) and margin >= min_margin, detail)


async def run_self_test(
    client: ScoreClient, url: str, cfg: RerankerConfig, timeout_s: float = 30.0
) -> SelfTestResult:
    """Score the probes on the model server at `url`; any failure is a result, never an exception."""
    try:
        async with asyncio.timeout(timeout_s):
            pairs = []
            for query, relevant, irrelevant in PROBES:
                scores = await client.score(url, query, [relevant, irrelevant], timeout_s)
                pairs.append((scores[0], scores[1]))
    except (RerankerError, TimeoutError) as exc:
        return SelfTestResult(
            False, f"the model server did not answer the self-test: {str(exc) or type(exc).__name__}"
        )
    # Embedding cosines are not probabilities: they bunch together, so only their order can be judged.
    result = judge(pairs, 0.0 if cfg.api == "embeddings" else MIN_MEAN_MARGIN)
    if not result.ok:
        hint = (
            "check reranker.prompt_format: `qwen3` when the server does not apply Qwen3-Reranker's template, "
            "`none` when it does (vLLM started with --chat-template); and vLLM's --hf_overrides"
            if cfg.api != "embeddings"
            else "check reranker.model and the query/passage prefixes"
        )
        return SelfTestResult(False, f"{result.detail}: scores look random; {hint}")
    return result


async def check_reranker(client: ScoreClient, cfg: RerankerConfig) -> dict[str, SelfTestResult]:
    """Self-test every configured URL and log the outcome; the proxy serves (degraded if need be) anyway."""
    results: dict[str, SelfTestResult] = {}
    for url in cfg.url:
        result = await run_self_test(client, url, cfg)
        results[redact_url(url)] = result
        if result.ok:
            log.info("reranker self-test passed at %s: %s", redact_url(url), result.detail)
        else:
            log.warning(
                "reranker self-test FAILED at %s: %s (the proxy keeps serving, but its reranked order may be "
                "no better than chance until the setting is fixed)",
                redact_url(url),
                result.detail,
            )
    return results
