"""A connection's whole opening, sans I/O: the hello (and authentication) of
``hello.Opening``, then, where both ends announced same-host copies, the
probe in both directions (docs/PROTOCOL.md, "Same host", "The probe").

The driver sends ``outgoing()``, reads ``wanted`` bytes for ``received``,
and, whenever ``probe`` is set, reads the peer's probe bytes from the peer
process and hands ``answer_probe`` the status (``samehost.EQUAL``, ...);
the opening is done when ``wanted`` is 0 and ``probe`` is None.
"""

from __future__ import annotations

from arraywire._wire import control, hello, samehost
from arraywire._wire.errors import ProtocolError

# The two records of the probe, whole: what each end reads of the other's.
# The records of the probe: each end reads a record's start, checks it, then its body.
BODIES = {control.PROBE: samehost.PROBE.size, control.PROBE_ANSWER: samehost.ANSWER.size}
PARTS = {
    "probe": "same-host probe", "probe body": "same-host probe",
    "answer": "same-host probe answer", "answer body": "same-host probe answer",
}


def announced(same_host: bool | None, *, unix: bool, tls: bool, streams: bool) -> int:
    """The capabilities an end announces: control records always; same-host
    copies on an AF_UNIX connection of one stream, with ``same_host`` None
    (the default) unless under TLS, with True under TLS too, never with False."""
    check_same_host(same_host)
    wanted = not tls if same_host is None else same_host
    return hello.CONTROL | (hello.SAME_HOST if wanted and unix and not streams else 0)


def check_same_host(same_host: object) -> None:
    """TypeError unless same_host is None, True or False."""
    if same_host is not None and not isinstance(same_host, bool):
        raise TypeError(f"same_host must be None, True or False, got {same_host!r}")


class Opening:
    """``hello.Opening`` followed by the same-host probe when the hello
    turned ``hello.SAME_HOST`` on. ``capabilities`` keeps SAME_HOST only once
    both probe answers said EQUAL (``same_host``)."""

    __slots__ = (
        "_answered", "_hello", "_memory", "_on", "_outgoing", "_step", "probe", "wanted",
    )

    def __init__(
        self,
        authkey: bytes | None,
        *,
        connecting: bool,
        group: hello.Group | None = None,
        bare: bool = False,
        capabilities: int = hello.ANNOUNCED,
    ) -> None:
        self._hello = hello.Opening(
            authkey, connecting=connecting, group=group, bare=bare, capabilities=capabilities
        )
        self._step = "hello"
        self._outgoing = b""
        self._memory: object = None  # this end's probe bytes, kept until the peer's answer
        self._answered = -1
        self._on = False
        self.probe: samehost.Probe | None = None  # the peer's probe, to read and answer
        self.wanted = self._hello.wanted

    @property
    def part(self) -> str:
        """What the wanted bytes are, for error messages."""
        return PARTS.get(self._step) or self._hello.part

    @property
    def peer(self) -> hello.Hello | None:
        return self._hello.peer

    @property
    def early(self) -> bytes:
        return self._hello.early

    @property
    def group(self) -> hello.Group | None:
        return self._hello.group

    @property
    def capabilities(self) -> int:
        on = self._hello.capabilities
        return on if self.same_host else on & ~hello.SAME_HOST

    @property
    def same_host(self) -> bool:
        """Whether same-host copies are on: both probe answers EQUAL."""
        return self._on

    def answer_join(self, status: int, max_streams: int) -> None:
        self._hello.answer_join(status, max_streams)

    def outgoing(self) -> bytes:
        """The bytes to send now (taken: a second call gives b"")."""
        data, self._outgoing = self._hello.outgoing() + self._outgoing, b""
        return data

    def received(self, data: bytes) -> None:
        """The peer's next ``wanted`` bytes."""
        if self._step == "hello":
            self._hello.received(data)
            self.wanted = self._hello.wanted
            if not self.wanted and self._hello.capabilities & hello.SAME_HOST:
                self._memory, record = samehost.new_probe()
                self._outgoing += record
                self._expect("probe", control.SIZE)
        elif self._step == "probe":
            self._expect("probe body", self._start(data, control.PROBE))
        elif self._step == "probe body":
            self.probe = samehost.decode_probe(data)
            self.wanted = 0  # the driver reads the probe bytes first
        elif self._step == "answer":
            self._expect("answer body", self._start(data, control.PROBE_ANSWER))
        else:
            answer = samehost.decode_answer(data)
            self._memory = None
            self._on = samehost.copies_on(self._answered, answer)
            self._expect("done", 0)

    def answer_probe(self, status: int) -> None:
        """This end's answer to the peer's probe (``probe``), once read."""
        self._outgoing += samehost.encode_answer(status)
        self._answered = status
        self.probe = None
        self._expect("answer", control.SIZE)

    def _start(self, data: bytes, kind: int) -> int:
        """The body length of the record that starts with data, checked
        (before its body is read) to be the probe record expected here."""
        if not control.is_record(data):
            raise ProtocolError(
                f"the peer sent {bytes(data)!r} in the opening where its "
                f"{control.NAMES[kind]} record belongs"
            )
        record = control.decode(data, hello.CONTROL | hello.SAME_HOST)
        size = BODIES[kind]
        if record.kind != kind or record.length != size:
            raise ProtocolError(
                f"the peer sent a {control.NAMES[record.kind]} record of {record.length:,} "
                f"bytes in the opening where its {control.NAMES[kind]} record of {size} "
                "bytes belongs"
            )
        return size

    def _expect(self, step: str, size: int) -> None:
        self._step = step
        self.wanted = size
