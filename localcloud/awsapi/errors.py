"""The one error type of the local cloud's control-plane operations.

An operation (``JobsEngine.call``, ``CommandsEngine.call``) raises :class:`ApiError`; the HTTP layer turns
it into AWS's error response: the HTTP status, ``x-amzn-ErrorType: <code>`` and a JSON body
``{"message": ...}``, which botocore maps to ``client.exceptions.<code>``.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidRequestException", message)


def already_exists(message: str) -> ApiError:
    return ApiError(409, "ResourceAlreadyExistsException", message)


def conflict(message: str) -> ApiError:
    return ApiError(409, "ConflictException", message)


def version_conflict(message: str) -> ApiError:
    return ApiError(409, "VersionConflictException", message)


def invalid_state(message: str) -> ApiError:
    return ApiError(409, "InvalidStateTransitionException", message)


def limit_exceeded(message: str) -> ApiError:
    return ApiError(410, "LimitExceededException", message)
