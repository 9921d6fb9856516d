"""Websocket URL routes (the websocket issue adds the generate consumer here)."""

websocket_urlpatterns: list = []
