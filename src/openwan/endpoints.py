"""The one client of OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server, hosted APIs), shared by
prompt extension and the curation captioner.

This module imports nothing of openwan.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class EndpointError(RuntimeError):
    """A chat-completions request that failed; the message says why (unreachable, HTTP status, timeout, an answer
    that is not a chat completion)."""


def _retryable(err: Exception) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code == 429 or err.code >= 500
    return isinstance(err, urllib.error.URLError | TimeoutError | ConnectionError)


def _describe(err: Exception, endpoint: str) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason} from {endpoint}"
    if isinstance(err, TimeoutError):
        return f"no answer from {endpoint} in time ({err})"
    if isinstance(err, urllib.error.URLError):
        return f"cannot reach {endpoint} ({err.reason})"
    return f"{type(err).__name__} from {endpoint}: {err}"


def chat_completion(url: str, body: dict[str, Any], api_key: str = "", timeout: float = 120.0, retries: int = 2,
                    retry_wait_s: float = 2.0) -> str:
    """The first choice's message text from an OpenAI-compatible chat-completions endpoint (``url`` is its base,
    e.g. http://host:8000/v1, or the full .../chat/completions URL). Timeouts, connection errors, HTTP 429 and 5xx
    are tried again ``retries`` times; any failure raises EndpointError saying what happened."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode()
    for tries in range(1, retries + 2):
        try:
            request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
            break
        except Exception as err:  # noqa: BLE001 — every failure becomes an EndpointError that says what happened
            if tries <= retries and _retryable(err):
                time.sleep(retry_wait_s * 2 ** (tries - 1))
                continue
            after = f" after {tries} tries" if tries > 1 else ""
            raise EndpointError(_describe(err, endpoint) + after) from None
    try:
        answer = json.loads(raw)
        text = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint} answered with something other than a chat completion: "
                           f"{raw[:200]!r}") from None
    if not isinstance(text, str):
        raise EndpointError(f"{endpoint} answered with a non-text message content: {str(text)[:200]}")
    return text


__all__ = ["EndpointError", "chat_completion"]
