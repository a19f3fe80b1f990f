"""
C{--log-format text}: twistd's own log lines, for less CPU.

twistd logs each event with C{textFileLogObserver}, whose time stamp
(C{2025-01-31T12:00:00+0000}, to the second) is worked out afresh for
every line: a time zone from two C{fromtimestamp} calls, a C{datetime},
a C{strftime}, about 6 us, three times for every message received (the
connection, the transaction, the disconnection).  L{textLogObserver}
writes the very same lines, with Twisted's own
C{formatEventAsClassicLogText}, but makes the time stamp once a second,
and the text of the usual lines with C{str.format_map} rather than
Twisted's C{string.Formatter} (L{classicLine}).

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


def classicLine(event: Mapping[str, Any], stamps: Callable[[Optional[float]], str]) -> Optional[str]:
    """
    What C{formatEventAsClassicLogText(event, stamps)} gives, made faster
    for the events the server logs all the time: a text format whose
    fields are plain names (no C{()} call, Twisted's one addition to
    C{str.format}), without a failure, a C{log_system} or a flattened
    form.  Such a format gives with C{str.format_map} what Twisted's
    C{string.Formatter} gives, field by field in Python, at a fraction of
    the cost; every other event, and one whose format fails, is left to
    Twisted.
    """
    text = event.get("log_format")
    if (
        type(text) is not str
        or "(" in text
        or "log_failure" in event
        or "log_system" in event
        or "log_flattened" in event
    ):
        return formatEventAsClassicLogText(event, stamps)
    try:
        text = text.format_map(event)
    except Exception:
        return formatEventAsClassicLogText(event, stamps)
    if not text:
        return None
    level = event.get("log_level")
    line = (
        f"{stamps(event.get('log_time'))} "
        f"[{event.get('log_namespace', '-')}#{'-' if level is None else level.name}] {text}"
    )
    return line.replace("\n", "\n\t") + "\n"


def textLogObserver(outFile: IO[str]) -> ILogObserver:
    """
    An observer writing to C{outFile} exactly what twistd's
    C{textFileLogObserver} would, its time stamps made once a second and
    the usual lines made with L{classicLine}.
    """
    stamps = TimeStamps()
    return FileLogObserver(outFile, lambda event: classicLine(event, stamps))


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
