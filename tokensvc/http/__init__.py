"""The HTTP layer: the JSON endpoints (token, introspection, revocation, principal, discovery,
registration, the admin API), the hot-path front door, request reading and responses.

These modules turn requests into calls on the domain (the modules of `tokensvc` itself) and its
answers and errors into RFC-shaped responses; the HTML pages are in `tokensvc.web`.
"""
