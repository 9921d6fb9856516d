"""OpenAPI (drf-spectacular): the bearer scheme and the error responses every operation can give."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField(help_text="What went wrong and how to fix it.")
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, permission_error, ...")
    param = serializers.CharField(allow_null=True, help_text="The request field at fault, if one is.")
    code = serializers.CharField(allow_null=True, help_text="A machine-readable reason, e.g. insufficient_scope.")


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the whole server (OpenAI's)."""

    error = ErrorDetailSerializer()


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "models_app.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token, `khk_...`, with models:read to read and models:manage to change.",
        }


class ManagementAutoSchema(AutoSchema):
    """Adds the error responses each operation can return, so the docs list every status."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        # drf-spectacular has no public hook for responses shared by all operations;
        # this private method is where it assembles them, stable since 0.2x.
        responses = super()._get_response_bodies(direction)
        codes = [401, 403, 429]
        if self.method != "GET" or "{" not in self.path:
            codes.append(400)  # a body, or list filters, to validate
        if "{" in self.path:
            codes.append(404)
        for code in sorted(codes):
            responses.setdefault(
                str(code), self._get_response_for_code(ErrorSerializer, str(code), direction=direction)
            )
        return responses
