"""Review: annotators check records in Argilla.

`curate review serve` runs argilla-server 2.8 (with its web UI) on 127.0.0.1
from a dedicated virtualenv, with an embedded search engine and a pip-installed
Redis: no Docker, no Elasticsearch. This package stays light: importing it
loads no third-party module, and `search_engine.py` / `launcher.py` run only in
the server's virtualenv.
"""
