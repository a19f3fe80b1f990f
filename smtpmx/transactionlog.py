"""
The record of one SMTP transaction that reached the end of its data, and
the log line made from it: who sent what to whom, what became of each
recipient, what the message filters and sender authentication said, and
the reply.  Plain values, made by L{smtpmx.session} and logged by
L{smtpmx.server}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from smtpmx.auth.results import AuthResults, logText
from smtpmx.envelope import Envelope
from smtpmx.reply import Reply

# The transaction's log line; its fields come from
# L{TransactionRecord.logFields}.
TRANSACTION_LOG_FORMAT = (
    "{id}: client=[{client}] helo={helo} from={sender} to=[{verdicts}] "
    "size={size}{filters}{auth} result={result}"
)


@dataclass(frozen=True)
class RecipientVerdict:
    """
    What became of one RCPT, for the transaction's log line.
    """

    address: str
    reply: Reply
    decidedBy: Optional[str]


@dataclass(frozen=True)
class TransactionRecord:
    """
    How one transaction that reached the end of DATA ended: what its log
    line says, and the reply the client gets.

    @ivar duration: seconds from MAIL to the reply to the end of data.
    """

    envelope: Envelope
    verdicts: list[RecipientVerdict]
    size: int
    reply: Reply
    filters: tuple[str, ...] = ()
    authResults: Optional[AuthResults] = None
    duration: float = 0.0

    def logFields(self) -> dict:
        """
        The fields of L{TRANSACTION_LOG_FORMAT}: queue ID, client, HELO
        name, sender, each recipient's verdict (and which validator gave
        it), message size, what each message filter said (when any was
        asked), the sender authentication verdicts (when checked) and
        result.
        """
        auth = ""
        if self.authResults is not None:
            auth = f" auth=[{logText(self.authResults)}]"
        envelope = self.envelope
        verdicts = ", ".join(
            f"<{v.address}> {v.reply.code} {v.reply.enhanced or ''}".rstrip()
            + (f" by {v.decidedBy}" if v.decidedBy else "")
            for v in self.verdicts
        )
        return dict(
            id=envelope.queueId,
            client=envelope.clientHost,
            helo=envelope.heloName,
            sender=envelope.reversePath.path if envelope.reversePath else "<>",
            verdicts=verdicts,
            size=self.size,
            filters=f" filters=[{', '.join(self.filters)}]" if self.filters else "",
            auth=auth,
            result=str(self.reply),
        )
