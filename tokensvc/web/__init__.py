"""The web layer: every page the service renders for a person in a browser.

The rest of tokensvc speaks JSON to programs; this package is its HTML side, kept apart so the
layers show in the file tree:

- authorize.py, authrequest.py: the authorization endpoint (RFC 6749 §4.1), its sign-in,
  consent and sign-out pages, and the authorization request they carry along;
- console.py, consoleauth.py: the admin console at /admin and the sign-in and CSRF guard of
  its forms;
- pages.py: the Jinja2 environment, security headers, CSRF tokens and cookies both share;
- templates/, static/: the pages themselves, their stylesheet and the console's script.

It builds on the same services, store and registry as the JSON endpoints and adds no storage
of its own.
"""
