"""
C{--log-format text}: twistd's own log lines, for less CPU.

twistd logs each event with C{textFileLogObserver}, whose time stamp
(C{2025-01-31T12:00:00+0000}, to the second) is worked out afresh for
every line: a time zone from two C{fromtimestamp} calls, a C{datetime},
a C{strftime}, about 6 us, three times for every message received (the
connection, the transaction, the disconnection).  L{textLogObserver}
writes the very same lines, with Twisted's own
C{formatEventAsClassicLogText}, but makes the time stamp once a second.

L{twistdTextObserver} gives it where twistd would write its lines
(L{smtpmx.jsonlog.twistdLogFile}), and, as twistd does, rotates a log file
on C{SIGUSR1}.  Where twistd must decide for itself it gives nothing:
with C{--syslog}, and for a daemon told to log to stdout, which twistd
refuses.
"""

from __future__ import annotations

import signal
from typing import IO, Any, Callable, Mapping, Optional

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.logfile import LogFile

from smtpmx.jsonlog import twistdLogFile


class TimeStamps:
    """
    Formats a log event's time as twistd's text log does
    (C{twisted.logger.formatTime} with its RFC 3339 format), remembering
    the last second formatted: the stamp has no finer part, so every
    event of that second gets the same text.
    """

    def __init__(self, timeFormat: str = timeFormatRFC3339) -> None:
        self._timeFormat = timeFormat
        self._second: Optional[int] = None
        self._text = ""

    def __call__(self, when: Optional[float]) -> str:
        """
        The time stamp of an event logged at C{when} (C{"-"} for none).
        """
        if when is None:
            return formatTime(when, self._timeFormat)
        second = int(when // 1)
        if second != self._second:
            self._text = formatTime(when, self._timeFormat)
            self._second = second
        return self._text


def textLogObserver(outFile: IO[str]) -> ILogObserver:
    """
    An observer writing to C{outFile} exactly what twistd's
    C{textFileLogObserver} would, its time stamps made once a second.
    """
    stamps = TimeStamps()
    return FileLogObserver(outFile, lambda event: formatEventAsClassicLogText(event, stamps))


def twistdTextObserver(
    twistdOptions: Optional[Mapping[str, Any]],
    callFromThread: Callable[..., None],
) -> Optional[ILogObserver]:
    """
    The text observer for where twistd would write its own lines: stdout
    for C{--nodaemon} without a log file (or with C{--logfile=-}), else
    C{--logfile} (C{twistd.log} by default), rotated on C{SIGUSR1} as
    twistd rotates it, unless something else already handles C{SIGUSR1}.

    @param twistdOptions: twistd's own options, or L{None} without twistd
        (tests): then L{None}.
    @param callFromThread: the reactor's, for the rotation a signal asks.

    @return: the observer, or L{None} where twistd must decide itself
        (C{--syslog}; a daemon told to log to stdout, which twistd
        refuses with a message).
    """
    if twistdOptions is None or twistdOptions.get("syslog"):
        return None
    if twistdOptions.get("logfile") == "-" and not twistdOptions.get("nodaemon"):
        return None
    outFile = twistdLogFile(twistdOptions)
    if isinstance(outFile, LogFile) and not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            callFromThread(outFile.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return textLogObserver(outFile)
