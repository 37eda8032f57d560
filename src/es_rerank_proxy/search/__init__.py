"""One search from request to page: eligibility, recall rewrite, _msearch, query text, blend, page, pipeline.

May import edge, model, rollout, observe, config and errors; never admin, tools, app or cli.
"""
