"""What a search leaves behind: Prometheus metrics, the per-search record, the JSON search log, and
the UBI query records written to Elasticsearch.

May import rollout's order statistics, config and errors; never admin, tools, app or cli.
"""
