"""The admin listener's handlers: health, ready, config, metrics, the debug page and the warm endpoint.

May import the runtime and every request-path package; never tools, app or cli.
"""
