"""Providers: one module per kind (log, webhook, smtp, twilio, fcm), plus the Protocol."""
