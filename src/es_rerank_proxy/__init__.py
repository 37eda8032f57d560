"""es-rerank-proxy: give an existing Elasticsearch search a neural reranker, with no client change."""

__version__ = "0.1.0"
