"""Alerts for operators: `alert_raise(key=..., severity=..., title=...)` and
`alert_resolve(key=...)` (in btcloan.alerts.services); notified to the log, email and a webhook.
"""
