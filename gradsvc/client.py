"""HTTP client for the gradient service: timeouts, bounded retries with exponential backoff, typed errors."""

from __future__ import annotations

import os
import time

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
# 429: the gateway's rate and concurrency limits (it sends Retry-After); 502/503/504: no replica answered in time
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# No answer, or one cut off mid-body (a worker killed while writing it: a gateway cannot retry a response whose
# headers it has forwarded). Retrying either is safe: every computation is pure.
RETRY_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class GradsvcError(Exception):
    """Base class for everything the client raises."""


class ServiceUnavailable(GradsvcError):
    """No answer (connection refused, timeout, a response cut off) or 429/502/503/504, still after every retry."""


class RequestError(GradsvcError):
    """The request cannot be sent: its body is not JSON (an overflowing number read as inf, a YAML date...)."""


class ProblemError(GradsvcError):
    """The service answered with an error: `status` and the problem+json body in `problem`."""

    def __init__(self, status: int, problem: dict) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())
        self.status = status
        self.problem = problem


class ClientError(ProblemError):
    """The service refused the request (4xx): fix the request, retrying will not help."""


class ServerError(ProblemError):
    """The service failed (500 or another 5xx that retrying does not help), or answered something that is not JSON."""


class Client:
    """One service endpoint. `retries` extra attempts after the first, waiting backoff * 2**n (capped) in between.

    >>> Client("http://127.0.0.1:8000").check({...}, format="gradescope")
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: requests.Session | None = None,
        sleep=time.sleep,
    ) -> None:
        self.url = (url or os.environ.get("GRADSVC_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("GRADSVC_API_KEY")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()
        self._sleep = sleep
        self.last_headers: dict = {}  # the headers of the last response decoded (check(): Grade-Passed)

    # the endpoints ----------------------------------------------------------------------------------

    def compute(self, spec: dict) -> dict:
        """POST /v1/gradients."""
        return self.post("/v1/gradients", spec)

    def check(self, request: dict, format: str = "json") -> dict:
        """POST /v1/check; format "json", "gradescope" or "prairielearn"."""
        return self.post("/v1/check", request, params={"format": format} if format != "json" else None)

    def grade(self, body: dict, platform: str = "json", deadline: float | None = None) -> dict:
        """POST /v1/grade: {"problem": <problem file>, "answers": ...} -> the platform's results document."""
        return self.post("/v1/grade", body, params={"format": platform}, deadline=deadline)

    def batch(self, jobs: list) -> list:
        """POST /v1/batch; the results in job order (each a response or {"error": problem})."""
        return self.post("/v1/batch", {"jobs": jobs})["results"]

    # transport ---------------------------------------------------------------------------------------

    def delay(self, attempt: int, response: requests.Response | None = None) -> float:
        """Exponential backoff, or the server's Retry-After when it is shorter than the cap."""
        wait = min(self.max_backoff, self.backoff * 2**attempt)
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.isdigit():
            wait = min(self.max_backoff, max(wait, float(retry_after)))
        return wait

    def post(self, path: str, body, params: dict | None = None, deadline: float | None = None) -> dict:
        """POST with retries; `deadline` (a time.monotonic() value) bounds every attempt and wait, retries included."""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, made = "no attempt made", 0
        for attempt in range(self.retries + 1):
            response = None
            timeout = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
            if timeout <= 0.05:
                last = f"{last}; deadline reached"
                break
            made += 1
            try:
                response = self.session.post(
                    self.url + path, json=body, params=params, headers=headers, timeout=timeout
                )
            except requests.exceptions.InvalidJSONError as err:  # before sending: retrying cannot help
                raise RequestError(f"the request body cannot be sent as JSON: {err}") from None
            except RETRY_ERRORS as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if response.status_code not in RETRY_STATUSES:
                    self.last_headers = response.headers
                    return self._decode(response)
                last = f"HTTP {response.status_code}"
            if attempt < self.retries:
                wait = self.delay(attempt, response)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                self._sleep(wait)
        raise ServiceUnavailable(f"{self.url}{path}: unavailable after {made} attempt(s) ({last})")

    @staticmethod
    def _decode(response: requests.Response) -> dict:
        try:
            body = response.json()
        except ValueError:
            raise ServerError(response.status_code, {"title": "Not JSON", "detail": response.text[:200]}) from None
        if response.status_code >= 500:
            raise ServerError(response.status_code, body if isinstance(body, dict) else {})
        if response.status_code >= 400:
            raise ClientError(response.status_code, body if isinstance(body, dict) else {})
        return body
