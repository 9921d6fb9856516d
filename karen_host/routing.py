"""Websocket URL routes."""

from django.urls import path

from inference.consumers import GenerateConsumer

websocket_urlpatterns = [
    path("ws/v1/generate", GenerateConsumer.as_asgi()),
]
