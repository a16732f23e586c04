"""tokensvc: an OAuth 2.0 authorization server that issues, checks and revokes tokens fast."""

__version__ = "0.1.0"
