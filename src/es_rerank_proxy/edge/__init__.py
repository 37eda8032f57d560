"""The HTTP edges: streaming pass-through, the Elasticsearch pool (TLS, rotation), bodies in and answers out,
and the listeners themselves (their HTTP limits and TLS certificates).

May import config and errors only; never search, model, rollout, admin, tools, app or cli.
"""
