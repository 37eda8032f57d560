"""Commands a person runs, never on the request path: demo, eval, datasets, warm client, local stand-ins.

May import anything but app internals: the app only through its public factories.
"""
