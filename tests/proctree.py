"""
The processes of a server, read from C{/proc}: a server that is more than
one process (Postfix's master and its daemons, a server with workers, an
MTA that runs a delivery agent per message) is measured and stopped as a
whole.

  - L{descendants}: a process and every process below it;
  - L{cpuSeconds}: the CPU time they used, including that of the children
    they have already reaped, so that a process that came and went
    between two readings is still counted;
  - L{Memory} and L{memory}: their resident set, summed (RSS and PSS);
  - L{stopGroup}: end what is left of a process group, by PID, once its
    leader is gone.

Linux only; every function returns nothing (or zero) for processes that
end while they are read.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Iterable, Optional

from tests.helpers import waitUntil

TICKS = os.sysconf("SC_CLK_TCK")


def readStat(pid: int) -> Optional[list[str]]:
    """
    The fields of C{/proc/PID/stat} after the command name (field 3, the
    state, first), or L{None} if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold spaces or parentheses.
    return data[data.rindex(")") + 2 :].split()


def allProcesses() -> dict[int, list[str]]:
    """
    Every process now, by PID: its L{readStat} fields.
    """
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = readStat(int(name))
            if fields is not None:
                found[int(name)] = fields
    return found


def descendants(root: int) -> list[int]:
    """
    C{root} and every living process below it (children, their children,
    and so on), zombies left out.
    """
    processes = allProcesses()
    children: dict[int, list[int]] = {}
    for pid, fields in processes.items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        fields = processes.get(pid)
        if fields is None or fields[0] == "Z":
            continue
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpuSeconds(pids: Iterable[int]) -> float:
    """
    The CPU time, user and system, of the processes C{pids} and of the
    children each has reaped (C{cutime} and C{cstime}), in seconds.

    Taken over L{descendants} of a server at two moments, the difference
    is what the server used in between, including processes that started
    and ended in between, as long as their parent (in the tree) reaped them.
    """
    ticks = 0
    for pid in pids:
        fields = readStat(pid)
        if fields is not None:
            # utime, stime, cutime, cstime: fields 14 to 17 of stat(5).
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / TICKS


@dataclass(frozen=True)
class Memory:
    """
    The memory of a group of processes at one moment.

    @ivar rss: the sum of their resident sets, in bytes (pages shared by
        several of them are counted once for each).
    @ivar pss: the sum of their proportional set sizes, in bytes (a
        shared page is split between those sharing it: the sum is what
        the group really occupies).
    @ivar processes: how many there are.
    """

    rss: int
    pss: int
    processes: int


def memory(pids: Iterable[int]) -> Memory:
    """
    The L{Memory} of the processes C{pids} now.
    """
    rss = pss = count = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                text = f.read().decode("ascii", "replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        values = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1]) * 1024
        if "Rss:" in values:
            rss += values["Rss:"]
            pss += values.get("Pss:", values["Rss:"])
            count += 1
    return Memory(rss, pss, count)


def groupMembers(pgid: int) -> list[int]:
    """
    The living processes of process group C{pgid}, zombies left out.
    """
    return [
        pid for pid, fields in allProcesses().items() if int(fields[3]) == pgid and fields[0] != "Z"
    ]


def stopGroup(pgid: int, grace: float = 5.0) -> list[int]:
    """
    End whatever is left of process group C{pgid} (a server started in a
    session of its own, once its leader has been stopped): SIGTERM to each
    member by its PID, then SIGKILL to those still there after C{grace}
    seconds.

    @return: the PIDs that had to be signalled (empty when the leader took
        every member with it).
    """
    left = groupMembers(pgid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if left and not waitUntil(lambda: not groupMembers(pgid), grace, interval=0.05):
        for pid in groupMembers(pgid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        waitUntil(lambda: not groupMembers(pgid), grace, interval=0.05)
    return left


def loadAverage() -> float:
    """
    The machine's load average over the last minute.
    """
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])

