"""Errors a caller can act on, each with the numeric code of the shared close-code table.

The same codes are used as HTTP error bodies (``{code, message}``) and as WebSocket close codes,
so a UI needs one table.  4001-4010 come from the original WebSocket spec; 4011 and 4012 are ours.
"""

from __future__ import annotations

INVALID_TERMINAL_ID = 4001
INVALID_TERMINAL_TYPE = 4002
AUTHENTICATION_FAILED = 4003
ALREADY_CONNECTED = 4004
RATE_LIMIT = 4005
INVALID_MESSAGE = 4006
NOT_FOUND = 4007
PERMISSION_DENIED = 4008
LOCK_TIMEOUT = 4009
CONFLICT_RESOLUTION_FAILED = 4010
INVALID_TRANSITION = 4011
STORAGE_UNAVAILABLE = 4012


class MeshposError(Exception):
    """Base of every error that maps to ``{code, message}`` and an HTTP status."""

    code = INVALID_MESSAGE
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class InvalidInput(MeshposError):
    code = INVALID_MESSAGE
    http_status = 422


class NotFound(MeshposError):
    code = NOT_FOUND
    http_status = 404


class PermissionDenied(MeshposError):
    code = PERMISSION_DENIED
    http_status = 403


class NotEnrolled(MeshposError):
    """A mesh operation on a terminal that is not enrolled in a store (it runs alone)."""

    code = PERMISSION_DENIED
    http_status = 409


class InvalidTransition(MeshposError):
    code = INVALID_TRANSITION
    http_status = 409


class Unavailable(MeshposError):
    """The write could not be made durable (disk error); nothing was acknowledged."""

    code = STORAGE_UNAVAILABLE
    http_status = 503


class NoQuorum(MeshposError):
    """The drawer lock is out of reach: too few voters reachable, or another terminal holds it."""

    code = LOCK_TIMEOUT
    http_status = 503


class MalformedEntity(MeshposError):
    """An entity whose value in a document breaks docs/documents.md.  409: the request is fine,
    the document is not; 4010 (conflict resolution failed): the merged state cannot be resolved
    into a valid entity.  Nothing is written until a valid value replaces it."""

    code = CONFLICT_RESOLUTION_FAILED
    http_status = 409


class Conflict(MeshposError):
    """An operation id reused for a different operation, or a review item resolved otherwise."""

    code = CONFLICT_RESOLUTION_FAILED
    http_status = 409


class StoreError(Exception):
    """A write failed to reach the disk; it was not acknowledged.  Here rather than in
    ``storage/`` because the layers above it - documents, the mesh, the cashier - act on it."""


class MessageRefused(ValueError):
    """A peer's control message that does not parse exactly or breaks its protocol: the link
    closes with 4006 and this text (the cashier's quorum messages raise it)."""


class ConfigError(Exception):
    """Invalid configuration; the message names the setting and where it came from."""
