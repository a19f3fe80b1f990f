"""
The relay queue's on-disk format: the state of a queued message
(L{QueuedMessage}, L{QueuedRecipient}), its env file's JSON encoding, and
the queue IDs that name its files.  Pure: nothing here touches the disk.
C{docs/storage.rst} describes the files.

Each queued message is two files named by its queue ID: C{msg/<ID>}, our
C{Received} header then the headers and body as received, LF line endings;
and C{env/<ID>}, the envelope and each recipient's state as produced by
L{encodeMessage}: a JSON object, ASCII only, with a C{version} field
(L{FORMAT_VERSION}).  Readers ignore fields they do not know, so that a
later version may add some.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

# Recipient states.
PENDING = "pending"
DELIVERED = "delivered"
BOUNCED = "bounced"
STATES = (PENDING, DELIVERED, BOUNCED)

# The version of the env file format, stored in every file.
FORMAT_VERSION = 1

# A queue ID names files: letters and digits only, never a path.  The
# server's IDs are 18 upper-case hexadecimal digits.
_ID_RE = re.compile(r"[0-9A-Za-z]{1,64}")

class CorruptMessage(ValueError):
    """
    An env file that cannot be read as a queued message.
    """


def isValidId(messageId: object) -> bool:
    """
    Whether C{messageId} can be a queue ID: 1 to 64 ASCII letters and
    digits, so that it can never name anything outside the queue.
    """
    return isinstance(messageId, str) and _ID_RE.fullmatch(messageId) is not None


def checkId(messageId: str) -> str:
    """
    Check a queue ID, which may come from an operator.

    @return: C{messageId}.

    @raise ValueError: it is not a valid queue ID.
    """
    if not isValidId(messageId):
        raise ValueError(f"not a queue ID: {messageId!r}")
    return messageId


@dataclass
class QueuedRecipient:
    """
    One recipient of a queued message, and how its delivery is going.

    @ivar address: the forward-path exactly as received, case kept, without
        angle brackets.
    @ivar state: C{"pending"}, C{"delivered"} or C{"bounced"}.
    @ivar attempts: delivery attempts made so far.
    @ivar nextAttempt: when to try next, in seconds since the epoch.
    @ivar lastReply: the last reply or error, for the operator and the
        bounce, or L{None} before the first attempt.
    @ivar remoteMta: the host that gave C{lastReply}, if any.
    @ivar via: L{None} for a recipient relayed to the next hop of its
        domain; for a local recipient of a domain delivered by a courier
        backend, its specification C{NAME:ARG}
        (C{lmtp:unix:/run/dovecot/lmtp}).
    """

    address: str
    state: str = PENDING
    attempts: int = 0
    nextAttempt: float = 0.0
    lastReply: Optional[str] = None
    remoteMta: Optional[str] = None
    via: Optional[str] = None


@dataclass
class QueuedMessage:
    """
    The envelope and state of a queued message.

    @ivar id: the queue ID, also the file names.
    @ivar created: when it was queued, in seconds since the epoch.
    @ivar sender: the reverse-path without angle brackets, C{""} for the
        null path C{<>}.
    @ivar size: the size of the message file in bytes.
    @ivar clientHost: the address of the client it came from.
    @ivar heloName: the name that client gave in HELO or EHLO.
    @ivar recipients: one entry per distinct recipient.
    """

    id: str
    created: float
    sender: str
    size: int
    clientHost: str
    heloName: str
    recipients: list[QueuedRecipient] = field(default_factory=list)

    def pending(self) -> list[QueuedRecipient]:
        """
        The recipients still to be delivered, in order.
        """
        return [r for r in self.recipients if r.state == PENDING]


def encodeMessage(message: QueuedMessage) -> bytes:
    """
    The env file for C{message}: JSON, ASCII only (any character is
    escaped), ending with a newline.
    """
    data = {
        "version": FORMAT_VERSION,
        "id": message.id,
        "created": message.created,
        "sender": message.sender,
        "size": message.size,
        "clientHost": message.clientHost,
        "heloName": message.heloName,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "nextAttempt": r.nextAttempt,
                "lastReply": r.lastReply,
                "remoteMta": r.remoteMta,
                **({"via": r.via} if r.via is not None else {}),
            }
            for r in message.recipients
        ],
    }
    return json.dumps(data, indent=1).encode("ascii") + b"\n"


def _field(data: dict[str, Any], name: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
    """
    One field of a decoded env file, of one of C{kinds}.

    @raise CorruptMessage: it is missing or of another type.
    """
    if name not in data:
        if optional:
            return None
        raise CorruptMessage(f"missing field {name!r}")
    value = data[name]
    if value is None and optional:
        return None
    # bool is an int to Python, never to us.
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise CorruptMessage(f"field {name!r} has the wrong type")
    return value


def decodeMessage(data: bytes, messageId: str) -> QueuedMessage:
    """
    Read an env file.  Unknown fields are ignored, so that a later version
    may add some.

    @param messageId: the ID its file name gives; the file must agree.

    @raise CorruptMessage: it is not a queued message, or not this one.
    """
    try:
        decoded = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptMessage(f"not JSON: {e}") from None
    if not isinstance(decoded, dict):
        raise CorruptMessage("not a JSON object")
    version = _field(decoded, "version", (int,))
    if version != FORMAT_VERSION:
        raise CorruptMessage(f"unknown format version {version!r}")
    if _field(decoded, "id", (str,)) != messageId:
        raise CorruptMessage(f"the file names another message, {decoded['id']!r}")
    recipients = []
    entries = _field(decoded, "recipients", (list,))
    for entry in entries:
        if not isinstance(entry, dict):
            raise CorruptMessage("a recipient is not a JSON object")
        recipient = QueuedRecipient(
            address=_field(entry, "address", (str,)),
            state=_field(entry, "state", (str,)),
            attempts=_field(entry, "attempts", (int,)),
            nextAttempt=float(_field(entry, "nextAttempt", (int, float))),
            lastReply=_field(entry, "lastReply", (str,), optional=True),
            remoteMta=_field(entry, "remoteMta", (str,), optional=True),
            via=_field(entry, "via", (str,), optional=True),
        )
        if recipient.state not in STATES:
            raise CorruptMessage(f"unknown recipient state {recipient.state!r}")
        recipients.append(recipient)
    return QueuedMessage(
        id=messageId,
        created=float(_field(decoded, "created", (int, float))),
        sender=_field(decoded, "sender", (str,)),
        size=_field(decoded, "size", (int,)),
        clientHost=_field(decoded, "clientHost", (str,)),
        heloName=_field(decoded, "heloName", (str,)),
        recipients=recipients,
    )
