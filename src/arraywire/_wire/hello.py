"""The opening of a connection made by ``listen``/``connect``: the hello, and
with a key the authentication that follows it, sans I/O (docs/PROTOCOL.md,
"Connections").

Both ends send their hello at once, then read the peer's: one round trip.
Each end then speaks the lower of the two hello versions and sends messages
of at most the version the peer reads. Feature bits request what the
connection adds; an end that does not know a requested feature refuses it.
Capability bits (hello version 2, in version 1's reserved field) only say
what an end knows: a capability is on when both hellos are of version 2 or
later and both announce it, so an end that does not know one ignores it.

With a key (feature ``AUTH``) each hello carries a fresh random nonce. The
connecting end then proves it holds the key with an HMAC-SHA256 over both
hellos and their nonces; the listening end checks it and answers with its verdict and its own
proof, so neither end sees a message before both are authenticated, and a
recorded exchange is worth nothing against a fresh nonce.

With parallel streams (feature ``STREAMS``) each of the connecting end's
connections names its group, its index and the group's size; once the rest
of the opening is done the listening end answers whether the stream joined.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import NamedTuple

from arraywire._wire import peers
from arraywire._wire.errors import (
    AuthenticationError,
    ProtocolError,
    StreamsRefused,
    unexpected_peer,
)
from arraywire._wire.header import VERSION as MESSAGE_VERSION, decode_preamble

MAGIC = peers.HELLO_MAGIC
VERSION = 2
# magic, hello version, newest message version read, feature bits, length of
# the feature data that follows, capability bits (reserved, 0, in version 1)
HELLO = struct.Struct("<4sBBHII")
SIZE = HELLO.size
# Feature bit 0: authentication with a shared key; its data is the nonce.
AUTH = 0x0001
# Feature bit 1: one of a group of parallel streams; its data is GROUP.
STREAMS = 0x0002
KNOWN_FEATURES = AUTH | STREAMS
# Capability bit 0: control records (docs/PROTOCOL.md, "Control records").
CONTROL = 0x00000001
# Capability bit 1: same-host copies (docs/PROTOCOL.md, "Same host"); not in
# ANNOUNCED: the blocking drivers add it where opening.announced allows it.
SAME_HOST = 0x00000002
# What an opening announces by default: what this release's Channels handle.
ANNOUNCED = CONTROL
NONCE_BYTES = 32
# group id (random), this stream's index, the number of streams in the group
GROUP = struct.Struct("<16sHH")
GROUP_ID_BYTES = 16
# The listening end's answer to a stream: status, reserved, its max_streams.
JOIN = struct.Struct("<BBH")
JOINED = 1
TOO_MANY_STREAMS = 2
NOT_JOINABLE = 3
NO_STREAMS = 4
PROOF_BYTES = hashlib.sha256().digest_size
# The listening end's answer to the connecting end's proof.
ACCEPTED = b"\x01"
REFUSED = b"\x00"
VERDICT_BYTES = 1 + PROOF_BYTES
# Each proof says which end made it, so one end's proof is never the other's.
CONNECTING_LABEL = b"arraywire auth v1: connecting end"
LISTENING_LABEL = b"arraywire auth v1: listening end"


PARTS = {
    "hello": "hello",
    "features": "hello's feature data",
    "proof": "authentication proof",
    "verdict": "authentication verdict",
    "join": "answer to joining a stream group",
    "refusal": "refusal's reason",
    "done": "opening",
}


class Hello(NamedTuple):
    version: int
    reads_messages: int
    features: int
    capabilities: int = 0  # what the peer announced (0 in a version 1 hello)


class Group(NamedTuple):
    """A connection's place in a group of parallel streams."""

    ident: bytes
    member: int  # this stream's index, from 0
    size: int  # the number of streams in the group


# What a Channel assumes of a peer that sent no hello (version 0: none).
BARE_PEER = Hello(0, MESSAGE_VERSION, 0)


def feature_data_size(features: int) -> int:
    """The bytes of feature data that follow a hello with these feature bits."""
    return (NONCE_BYTES if features & AUTH else 0) + (GROUP.size if features & STREAMS else 0)


def decode_group(data: bytes) -> Group:
    """A stream's group from its hello's feature data, or ProtocolError."""
    group = Group(*GROUP.unpack(data))
    if group.size < 2 or group.member >= group.size:
        raise ProtocolError(
            f"stream group of {group.size} streams with this stream at index "
            f"{group.member}: a group has at least 2 streams, indexed from 0"
        )
    return group


def join_answer(status: int, max_streams: int) -> bytes:
    """The listening end's answer to a stream that asked to join a group."""
    return JOIN.pack(status, 0, min(max_streams, 0xFFFF))


def join_refused(status: int, group: Group, max_streams: int) -> StreamsRefused:
    """What the listening end says of a stream it did not let join."""
    if status == TOO_MANY_STREAMS:
        why = f"it asked for {group.size} streams and this end takes at most {max_streams}"
    else:
        why = "its group is gone (timed out) or has that stream already"
    return StreamsRefused(
        f"refused stream {group.member} of a group of {group.size}: {why}",
        status, max_streams, group.size, group.member,
    )


def check_join(data: bytes, group: Group) -> None:
    """Raise StreamsRefused unless the listening end's answer says this
    stream joined its group."""
    status, _, max_streams = JOIN.unpack(data)
    if status == JOINED:
        return

    def refused(message: str) -> StreamsRefused:
        return StreamsRefused(message, status, max_streams, group.size, group.member)

    if status == TOO_MANY_STREAMS:
        raise refused(
            f"the Listener takes at most {max_streams} streams per Channel and this end "
            f"asked for {group.size}: connect with streams={max_streams} or fewer, or "
            f"listen with max_streams={group.size}",
        )
    if status == NOT_JOINABLE:
        raise refused(
            f"the Listener did not let stream {group.member} join its group of "
            f"{group.size}: the group is gone (timed out) or already has that stream",
        )
    if status == NO_STREAMS:
        raise refused(
            "the Listener takes no parallel streams over TLS (an arraywire.aio Listener "
            "with ssl=): connect with streams=1",
        )
    raise ProtocolError(f"answer to joining a stream group has unknown status {status}")

def encode(features: int = 0, feature_data: int = 0, capabilities: int = 0) -> bytes:
    """A hello of this end."""
    return HELLO.pack(MAGIC, VERSION, MESSAGE_VERSION, features, feature_data, capabilities)


def shared_capabilities(mine: int, peer: Hello) -> int:
    """The capabilities on for a connection: those both ends announced, none
    when the peer's hello is of version 1 (it has no capability bits), and
    same-host copies only with the control records they speak in."""
    on = mine & peer.capabilities if peer.version >= 2 else 0
    return on if on & CONTROL else on & ~SAME_HOST


def capabilities_on(peer: Hello) -> int:
    """The capabilities on for a Channel whose opening announced ANNOUNCED
    and met this peer's hello (none for a peer without one)."""
    return shared_capabilities(ANNOUNCED, peer)


def decode(data: bytes) -> Hello:
    """Check a peer's hello; return what it offers, or raise ProtocolError."""
    if len(data) != SIZE:
        raise ProtocolError(f"hello is {len(data):,} bytes, expected {SIZE}")
    magic, version, reads_messages, features, extra, reserved = HELLO.unpack(data)
    if magic != MAGIC:
        raise unexpected(data)
    if version == 0 or reads_messages == 0:
        raise ProtocolError(
            f"hello declares version {version} and message version {reads_messages}; "
            "both start at 1"
        )
    if features & ~KNOWN_FEATURES:
        raise ProtocolError(
            f"the peer asks for features {features:#06x} that this arraywire lacks "
            "(upgrade arraywire at this end)"
        )
    expected = feature_data_size(features)
    # Capability bits travel in version 2 and later; version 1 reserves the field.
    if extra != expected or (version == 1 and reserved):
        raise ProtocolError(
            f"hello with features {features:#06x} carries {expected:,} bytes of feature "
            "data and, in version 1, a zero reserved field (capability bits need hello "
            f"version 2); got version {version}, {extra:,} bytes of feature data, "
            f"reserved {reserved:#x}"
        )
    return Hello(
        min(version, VERSION), min(reads_messages, MESSAGE_VERSION), features,
        reserved if version >= 2 else 0,
    )


def unexpected(first: bytes) -> ProtocolError:
    """What to raise for first bytes that are not a hello, saying what they are."""
    speaks = peers.identify(first)
    if speaks == "message":
        text = (
            "the peer sent a message without the hello of a connection: it uses a "
            "bare socket, so wrap that socket in arraywire.Channel(sock) at this end"
        )
    elif speaks == "tls":
        text = "the peer speaks TLS and this end does not: pass ssl= (an ssl.SSLContext) at this end too"
    elif speaks == "refusal":
        text = "the peer refused the connection (an arraywire recv that refuses a sender)"
    else:
        text = f"the peer is not arraywire: its hello begins with {first[:4]!r}, expected {MAGIC!r}"
    return unexpected_peer(text, speaks, bytes(first))


def proof(key: bytes, label: bytes, connecting_hello: bytes, listening_hello: bytes) -> bytes:
    """An end's proof: its role's label and both hellos, nonces included, so
    a feature bit cannot be stripped from a hello unnoticed."""
    return hmac.new(key, label + connecting_hello + listening_hello, hashlib.sha256).digest()


def check_key(authkey: bytes | None) -> None:
    """Refuse a key that is not non-empty bytes."""
    if authkey is None:
        return
    if not isinstance(authkey, bytes):
        raise TypeError(f"authkey must be bytes, got {type(authkey).__name__}")
    if not authkey:
        raise ValueError("authkey is empty: a key of 32 random bytes is usual")


class Opening:
    """One end's side of a connection's opening, sans I/O.

    The driver sends ``outgoing()`` whenever it is not empty, reads exactly
    ``wanted`` bytes and hands them to ``received``, until ``wanted`` is 0;
    ``peer`` is then the peer's hello. ``received`` raises ProtocolError for
    bytes that are not an arraywire opening, AuthenticationError for a key
    that does not match and (connecting with a ``group``)
    ConnectionRefusedError when the stream may not join; the driver sends
    ``outgoing()`` (a refusal the peer should read) before it closes the
    connection. A listening end whose peer is a stream of a group finds it in
    ``group`` once the opening is done, and answers with ``answer_join``.

    ``capabilities`` are the bits this end announces (what its driver
    handles: ``ANNOUNCED`` by default, what this release's Channels
    handle); once the opening is done, ``capabilities`` holds those on for
    the connection, the bits both ends announced.

    A ``bare`` end (no key, no group) speaks only when spoken to: a peer may
    begin with a message in place of its hello (a plain ``send_array``, the
    command line's plain sender). The opening is then done at once, with
    the message's first ``SIZE`` bytes in ``early`` for the driver to read
    before the rest; a hello is answered with this end's and goes on as usual.
    """

    __slots__ = (
        "_announced", "_bare", "_connecting", "_group", "_key", "_mine", "_outgoing",
        "_peer_hello", "_step", "capabilities", "early", "group", "peer", "wanted",
    )

    def __init__(
        self,
        authkey: bytes | None,
        *,
        connecting: bool,
        group: Group | None = None,
        bare: bool = False,
        capabilities: int = ANNOUNCED,
    ) -> None:
        check_key(authkey)
        if bare and (authkey is not None or group is not None):
            raise ValueError("an end that takes a bare message has no key and no stream group")
        self._bare = bare
        self.early = b""
        self._key = authkey
        self._connecting = connecting
        self._group = group
        features = 0 if authkey is None else AUTH
        data = b"" if authkey is None else os.urandom(NONCE_BYTES)
        if group is not None:
            features |= STREAMS
            data += GROUP.pack(*group)
        # this end's hello with its feature data, as the proofs cover it
        self._announced = capabilities
        self.capabilities = 0
        self._mine = encode(features, len(data), capabilities) + data
        self._outgoing = b"" if bare else self._mine
        self._peer_hello = b""
        self._step = "hello"
        self.peer: Hello | None = None
        self.group: Group | None = None
        self.wanted = SIZE

    @property
    def part(self) -> str:
        """What the wanted bytes are, for error messages."""
        return PARTS[self._step]

    def outgoing(self) -> bytes:
        """The bytes to send now (taken: a second call gives b"")."""
        data, self._outgoing = self._outgoing, b""
        return data

    def received(self, data: bytes) -> None:
        """The peer's next ``wanted`` bytes."""
        step = self._step
        if step == "refusal":
            raise self._refused(self._peer_hello + data)
        if step == "hello":
            if peers.identify(data) == "refusal":
                self._peer_hello = data
                rest = peers.REFUSAL.size + peers.reason_bytes(data) - SIZE
                if rest <= 0:
                    raise self._refused(data)
                self._expect("refusal", rest)
                return
            if self._bare and peers.identify(data) == "message":
                try:  # a preamble this end cannot read is refused now
                    decode_preamble(data)
                except ProtocolError as exc:
                    raise unexpected_peer(str(exc), "message", data) from None
                self.early = data
                self.peer = BARE_PEER
                self._expect("done", 0)
                return
            peer = decode(data)
            self._peer_hello = data
            if self._bare:  # it answers a hello now; the others sent theirs first
                self._outgoing = self._mine
            self._take_hello(peer)
        elif step == "features":
            self._peer_hello += data
            self._take_features(data)
        elif step == "proof":
            self._check_proof(data)
        elif step == "verdict":
            self._check_verdict(data)
        else:
            self._expect("done", 0)
            assert self._group is not None
            check_join(data, self._group)

    def _refused(self, refusal: bytes) -> ProtocolError:
        size = peers.REFUSAL.size
        reason = refusal[size : size + peers.reason_bytes(refusal)].decode("utf-8", "replace")
        self._expect("done", 0)
        return unexpected_peer(f"the peer refused: {reason}", "refusal", refusal)

    def _proof(self, label: bytes) -> bytes:
        assert self._key is not None
        if self._connecting:
            return proof(self._key, label, self._mine, self._peer_hello)
        return proof(self._key, label, self._peer_hello, self._mine)

    def _expect(self, step: str, size: int) -> None:
        self._step = step
        self.wanted = size

    def _take_hello(self, hello: Hello) -> None:
        self.peer = hello
        self.capabilities = shared_capabilities(self._announced, hello)
        peer_authenticates = bool(hello.features & AUTH)
        if peer_authenticates and self._key is None:
            raise AuthenticationError(
                "the peer requires authentication and this end has no key: pass the "
                "peer's key as authkey=",
                "this end",
            )
        if self._key is not None and not peer_authenticates:
            raise AuthenticationError(
                "this end requires authentication and the peer has no key: give it the "
                "same authkey=",
                "peer",
            )
        if hello.features & STREAMS and self._connecting:
            raise ProtocolError("the listening peer's hello names a stream group: only a connecting end's may")
        extra = feature_data_size(hello.features)
        if extra:
            self._expect("features", extra)
        else:
            self._authenticate()

    def _take_features(self, data: bytes) -> None:
        assert self.peer is not None
        if self.peer.features & STREAMS:
            self.group = decode_group(data[-GROUP.size :])
        self._authenticate()

    def _authenticate(self) -> None:
        if self._key is None:
            self._after_authentication()
        elif self._connecting:
            self._outgoing += self._proof(CONNECTING_LABEL)
            self._expect("verdict", VERDICT_BYTES)
        else:
            self._expect("proof", PROOF_BYTES)

    def _after_authentication(self) -> None:
        if self._group is not None:
            self._expect("join", JOIN.size)
        else:
            self._expect("done", 0)

    def answer_join(self, status: int, max_streams: int) -> None:
        """Answer the peer's request to join its group (the listening end, once
        the opening is done and ``group`` is set): JOINED, TOO_MANY_STREAMS or
        NOT_JOINABLE; the driver then sends ``outgoing()``."""
        self._outgoing += join_answer(status, max_streams)

    def _check_proof(self, data: bytes) -> None:
        if not hmac.compare_digest(data, self._proof(CONNECTING_LABEL)):
            self._outgoing += REFUSED + bytes(PROOF_BYTES)
            self._expect("done", 0)
            raise AuthenticationError(
                "the connecting peer's key differs from this end's key: connection refused"
            )
        self._outgoing += ACCEPTED + self._proof(LISTENING_LABEL)
        self._expect("done", 0)

    def _check_verdict(self, data: bytes) -> None:
        self._expect("done", 0)
        verdict = data[:1]
        if verdict == REFUSED:
            raise AuthenticationError(
                "the listening peer refused this end's key: the keys differ"
            )
        if verdict != ACCEPTED:
            raise ProtocolError(f"authentication verdict {verdict!r} is neither accepted nor refused")
        if not hmac.compare_digest(data[1:], self._proof(LISTENING_LABEL)):
            raise AuthenticationError(
                "the listening peer's proof does not match this end's key: it is not "
                "the peer that holds the key"
            )
        self._after_authentication()
