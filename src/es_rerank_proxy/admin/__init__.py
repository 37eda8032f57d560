"""The admin listener's handlers: health, ready, config, metrics, the debug page, warm jobs
and passage-vector export/import.

May import the runtime and every request-path package; never tools, app or cli.
"""
