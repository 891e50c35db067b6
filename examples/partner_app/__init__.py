"""
A partner web app built on awx-connection: connect, sign up, watch, disconnect.

Run it from the repository root with ``python -m examples.partner_app``;
see docs/partner-app.md. ``__main__`` wires the configuration (an embedded
fake Airwallex by default, real Airwallex from the environment), ``web``
holds the routes, and ``pages`` renders the HTML.
"""
