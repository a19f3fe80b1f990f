"""
C{--log-format json}: the log as one JSON object per line, for Loki,
Elasticsearch, jq and their kind (docs/monitoring.rst).

Every line has C{time} (ISO 8601, UTC), C{level} (C{debug}, C{info},
C{warn}, C{error}, C{critical}), C{text} (the line C{--log-format text}
would show, without its time and logger) and C{logger} (where it came
from); a failure adds C{traceback}.  A transaction's line adds its fields
(L{transactionFields}): C{queue_id}, C{client}, C{helo}, C{from}, C{to}
(a list), C{size}, C{result}, C{code}, C{filters}, C{recipients},
C{duration} and, with sender authentication, C{auth}.  smtpmx's other lines add the values they were logged with,
under their own names (C{client}, C{reply}, ...; a queue ID is
C{queue_id} everywhere).

twistd starts the log itself, before the server runs: it takes the
application's L{ILogObserver} component when there is one
(C{twisted.application.app.AppLogger}).  L{smtpmx.tap} sets it, with
L{JSONLogObserver} writing where twistd would have written its own lines
(L{twistdLogFile}).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any, Mapping, Optional

from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

from smtpmx.metrics import authOutcomes
from smtpmx.transactionlog import TransactionRecord

# The keys every line has; an event's own values never replace them.
RESERVED = frozenset({"time", "level", "text", "logger", "traceback"})

# Event keys renamed on the way out: the same thing has one name in every
# line.
RENAMED = {"id": "queue_id"}

# The key of an event that a worker of --workers logged and its parent
# writes (smtpmx.workers): the JSON object the worker made of it, with
# "worker", its number; it is written as it is.
RELAYED = "smtpmx_worker_fields"


def isoTime(timestamp: Optional[float]) -> Optional[str]:
    """
    A POSIX time as ISO 8601 in UTC, to the microsecond
    (C{2025-01-31T12:00:00.250000+00:00}).
    """
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


def transactionFields(record: TransactionRecord) -> dict[str, Any]:
    """
    The fields of a transaction's line: the same facts as the text line.

    C{from} and the addresses are bare (C{user@example.org}); the null
    reverse-path is C{""}.  C{to} lists the recipients accepted, in
    order; C{recipients} has every C{RCPT}'s verdict (C{to}, C{reply},
    C{by}: the validator that decided, or L{None}).  C{result} is the
    reply on one line and C{code} its number; C{filters} what each
    message filter said; C{duration} the seconds from MAIL to the reply.
    When the sender was checked (C{authResults}), C{auth} lists its
    verdicts: C{{"method": "spf", "result":
    "pass"}}, one per DKIM signature.
    """
    envelope = record.envelope
    fields = {
        "queue_id": envelope.queueId,
        "client": envelope.clientHost,
        "helo": envelope.heloName,
        "from": str(envelope.reversePath) if envelope.reversePath is not None else "",
        "to": [v.address for v in record.verdicts if 200 <= v.reply.code < 300],
        "size": record.size,
        "result": str(record.reply),
        "code": record.reply.code,
        "filters": list(record.filters),
        "recipients": [
            {"to": v.address, "reply": str(v.reply), "by": v.decidedBy} for v in record.verdicts
        ],
        "duration": round(record.duration, 6),
    }
    results = record.authResults
    if results is not None:
        fields["auth"] = [{"method": m, "result": r} for m, r in authOutcomes(results)]
    return fields


def eventFields(event: Mapping[str, Any]) -> dict[str, Any]:
    """
    The JSON object of one log event.
    """
    relayed = event.get(RELAYED)
    if isinstance(relayed, dict):
        return dict(relayed)
    level = event.get("log_level")
    namespace = event.get("log_namespace") or ""
    fields: dict[str, Any] = {
        "time": isoTime(event.get("log_time")),
        "level": getattr(level, "name", LogLevel.info.name),
        "text": formatEvent(event),
        "logger": namespace,
    }
    failure = event.get("log_failure")
    if failure is not None:
        fields["traceback"] = failure.getTraceback()
        if not fields["text"]:
            fields["text"] = failure.getErrorMessage()
    record = event.get("transaction")
    if isinstance(record, TransactionRecord):
        fields.update(transactionFields(record))
    elif namespace.startswith("smtpmx"):
        for key, value in event.items():
            if key.startswith("log_") or not isinstance(value, (str, int, float, bool, type(None))):
                continue
            key = RENAMED.get(key, key)
            if key not in RESERVED:
                fields.setdefault(key, value)
    return fields


def jsonLine(event: Mapping[str, Any]) -> str:
    """
    The line of one log event: its JSON object (L{eventFields}) and a
    newline.
    """
    return json.dumps(eventFields(event), ensure_ascii=False, default=str) + "\n"


@implementer(ILogObserver)
class JSONLogObserver:
    """
    Writes each log event as one line of JSON.
    """

    def __init__(self, outFile: IO[str]) -> None:
        """
        @param outFile: a text file; each line is flushed as written.
        """
        self.outFile = outFile

    def __call__(self, event: Mapping[str, Any]) -> None:
        """
        Write one event.
        """
        self.outFile.write(jsonLine(event))
        self.outFile.flush()


def twistdLogFile(twistdOptions: Optional[Mapping[str, Any]]) -> IO[str]:
    """
    Where twistd would write its log (C{twisted.scripts._twistd_unix}):
    stdout with C{--logfile=-}, or with C{--nodaemon} and no C{--logfile};
    else C{--logfile} (C{twistd.log} by default), rotated by size as
    twistd rotates it.

    @param twistdOptions: twistd's own options (the parent of smtpmx's),
        or L{None} when there are none (tests): stdout.
    """
    if twistdOptions is None:
        return sys.stdout
    path = twistdOptions.get("logfile") or ""
    if path == "-" or (twistdOptions.get("nodaemon") and not path):
        return sys.stdout
    return LogFile.fromFullPath(path or "twistd.log")
