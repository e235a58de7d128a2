"""APIError: a failure answered with OpenAI's error body and an HTTP status."""

from __future__ import annotations


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def bad_params(exc: ValueError) -> APIError:
    """A 400 for a SamplingParams / engine ValueError, naming the field when the message does."""
    message = str(exc)
    param = None
    if message.startswith("SamplingParams."):
        param = message.split(".", 1)[1].split(" ", 1)[0]
    return APIError(400, message, param=param)
