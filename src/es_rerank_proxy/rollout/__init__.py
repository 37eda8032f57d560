"""Who gets what, and how far an order moved: canary routing, shadow reranks, order statistics.

May import config and errors only; never admin, tools, app or cli.
"""
