"""Model servers and their rules: reranker and embeddings clients, scoring, budget, breaker, cache, self-test.

May import config and errors only; never search, admin, tools, app or cli.
"""
