"""One search from request to page: eligibility, recall rewrite, _msearch, query text, blend, page,
pipeline, and its UBI side (ext.ubi out of the body, the query record of the page shown).

May import edge, model, rollout, observe, config and errors; never admin, tools, app or cli.
"""
