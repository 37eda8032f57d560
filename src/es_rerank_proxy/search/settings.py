"""What the search pipeline derives from one Config, computed once per (re)load rather than per request."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from ..rollout import canary
from .plan import NeededFields


@dataclass(frozen=True, slots=True)
class Settings:
    """What the pipeline derives from one Config: computed once per (re)load, not per request."""

    config: Config
    canary: canary.CanaryRules
    needed: NeededFields  # every field the pipeline reads: the recall must return them
    features: NeededFields  # what the blend reads of every hit in the window
    texts: NeededFields  # what the model reads, of the top_n candidates only
    model_key: str

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        reranker = config.reranker
        key = "\x1f".join(
            (
                reranker.api,
                reranker.model,
                reranker.prompt_format,
                config.rerank.instruction,
                reranker.passage_prefix,
                str(reranker.labels_documents),
            )
        )
        weights = config.blend.weights
        date_field = config.blend.recency.field if weights.recency > 0 else ""
        citations_field = config.blend.citations.field if weights.citations > 0 else ""
        return cls(
            config=config,
            canary=canary.compile_canary(config.canary),
            needed=NeededFields(config.rerank.text_fields, date_field, citations_field),
            features=NeededFields((), date_field, citations_field),
            texts=NeededFields(config.rerank.text_fields, "", ""),
            model_key=key,
        )
