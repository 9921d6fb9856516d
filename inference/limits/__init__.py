"""Per-token limits: requests per minute, tokens per minute and requests in flight.

`admission` is what inference.api.flow calls; `budget` holds the decisions and the
store interface; `memory` and `in_redis` are the two stores; `headers` puts OpenAI's
x-ratelimit-* headers on the response.
"""
