"""The web console: fleet, incidents, hosts, alerts, actions and audit for the town's operators.

Off by default (``console = "HOST:PORT"`` in collector.toml turns it on). It
runs on the collector's event loop (aiohttp), renders pages on the server
(Jinja2, autoescaped), speaks French and English (gettext catalogues under
``locale/``, Babel for dates and numbers), and has no password database:
``tocsin console login`` (an operator certificate) prints a one-time link,
opening it gives a 12-hour session cookie bound to that operator's name.
Every state-changing request carries the session's CSRF token and is
audited as ``operator:<name> (console)``.
"""
