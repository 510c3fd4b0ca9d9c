"""Writes of the loan domain. Each function is keyword-only and named `<entity>_<action>`."""
