"""The management REST API (Django REST framework) at /api/v1: the admin's operations for scripts.

django-ninja keeps the OpenAI-compatible /v1 and the native endpoints; this package is
the operator's surface: models, configs, tokens and usage, with the same bearer tokens
and the same error shape.
"""
