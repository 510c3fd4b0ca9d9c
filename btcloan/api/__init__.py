"""The API's cross-cutting parts: errors, wallet sign-in, tokens and API keys, roles,
pagination and throttling. App endpoints (loans, quotes) build on these."""
