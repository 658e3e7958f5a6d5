"""`arraywire send` / `arraywire recv` with a key and TLS: real processes on
loopback, both backends, certificates from trustme."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import trustme
from backends import Backend
from test_cli import (  # the autouse fixture reaps this module's children too
    Cli,
    _reap_children,  # noqa: F401
    one_error_line,
    quiet_lines,
    same_file_contents,
    usage_error,
)

from arraywire._core import transport_py
from arraywire._wire import hello
from arraywire._wire.errors import ProtocolError
from arraywire._wire.header import decode_preamble

# Both ends of a refused connection are done well before any of the CLI's
# 10-second waits (the opening's default timeout, a refusing end's discard).
PROMPTLY = 9.0


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA that signed the certificates below
    server_cert: str  # for 127.0.0.1 and localhost
    server_key: str
    client: str  # certificate and key in one file
    other_ca: str
    stranger: str  # certificate and key for 127.0.0.1, signed by other_ca
    wrong_host: str  # certificate and key for example.org only, signed by ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(where / f"{name}.pem") for name in Pki.__dataclass_fields__}
    ca.cert_pem.write_to_path(paths["ca"])
    other_ca.cert_pem.write_to_path(paths["other_ca"])
    # the server's certificate chain and key in two files, the others in one
    for index, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(paths["server_cert"], append=index > 0)
    server.private_key_pem.write_to_path(paths["server_key"])
    ca.issue_cert("client.example").private_key_and_cert_chain_pem.write_to_path(paths["client"])
    other_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        paths["stranger"]
    )
    ca.issue_cert("example.org").private_key_and_cert_chain_pem.write_to_path(
        paths["wrong_host"]
    )
    return Pki(**paths)


def server_tls(pki: Pki) -> list[str]:
    return ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]


def client_cert(path: str) -> list[str]:
    return ["--tls-cert", path, "--tls-key", path]


@dataclass
class Outcome:
    send: tuple[int, str]
    recv: tuple[int, str]
    seconds: float  # from the second process's start until both ended
    # the listening receiver dropped the sender and went on waiting (the test stopped it)
    kept_listening: bool = False


def run_pair(
    backend: Backend, source: Path, output: Path, recv_args: list[str], send_args: list[str],
    *, swap: bool = False, env: dict[str, str] | None = None,
) -> Outcome:
    """A receiver and a sender, quiet; the receiver listens unless swap."""
    if swap:
        sender = Cli(backend, "send", str(source), "127.0.0.1:0", "--listen", "-q", *send_args,
                     env=env)
        port = sender.port()
        started = time.monotonic()
        receiver = Cli(backend, "recv", f"127.0.0.1:{port}", "-o", str(output), "--connect",
                       "-q", *recv_args, env=env)
    else:
        receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q", *recv_args,
                       env=env)
        port = receiver.port()
        started = time.monotonic()
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q", *send_args,
                     env=env)
        send = sender.finish()
        kept_listening = send[0] != 0 and receiver.dropped_or_done()
        seconds = time.monotonic() - started
        return Outcome(send, receiver.finish(), seconds, kept_listening)
    send, recv = sender.finish(), receiver.finish()
    return Outcome(send, recv, time.monotonic() - started)


def succeeded(outcome: Outcome, source: Path, output: Path) -> None:
    assert outcome.send[0] == 0, outcome.send[1]
    assert outcome.recv[0] == 0, outcome.recv[1]
    assert quiet_lines(outcome.send[1]) == [] and quiet_lines(outcome.recv[1]) == []
    same_file_contents(output, source)


def failed(outcome: Outcome, sender_says: str, receiver_says: str) -> None:
    """Both ends fail promptly, each with one line saying what was wrong: a
    receiver that connected exits 1; one that listens drops the sender and
    goes on waiting."""
    assert sender_says in one_error_line(outcome.send[1], "send")
    assert outcome.send[0] == 1
    assert outcome.seconds < PROMPTLY, outcome
    if outcome.kept_listening:
        dropped_line(outcome.recv[1], receiver_says)
        assert outcome.recv[0] == 130, outcome.recv  # stopped by the test, still waiting
    else:
        assert receiver_says in one_error_line(outcome.recv[1], "recv")
        assert outcome.recv[0] == 1


def dropped_line(stderr: str, says: str) -> None:
    """A listening receiver's one line on a peer it dropped."""
    lines = [line for line in quiet_lines(stderr) if "dropped" in line]
    assert len(lines) == 1, stderr
    assert re.fullmatch(r"arraywire recv: dropped 127\.0\.0\.1:\d+: .*", lines[0]), stderr
    assert says in lines[0], stderr


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "in.npy"
    np.save(source, np.random.default_rng(1).standard_normal((500, 300)))
    return source, tmp_path / "out.npy"


def key_file(where: Path, name: str, content: bytes) -> str:
    path = where / name
    path.write_bytes(content)
    return str(path)


ROLES = pytest.mark.parametrize("swap", [False, True], ids=["receiver-listens", "sender-listens"])


# --- success ---------------------------------------------------------------------


@ROLES
def test_transfer_with_a_key(backend: Backend, tmp_path: Path, files: tuple[Path, Path],
                             swap: bool) -> None:
    # the same key once surrounding whitespace is stripped
    one = key_file(tmp_path, "one.key", b"correct horse battery staple\n")
    two = key_file(tmp_path, "two.key", b"  correct horse battery staple \r\n")
    outcome = run_pair(backend, *files, ["--key-file", one], ["--key-file", two], swap=swap)
    succeeded(outcome, *files)


def test_transfer_over_tls(backend: Backend, tmp_path: Path, pki: Pki) -> None:
    """64 MB: long enough for the sender to watch for a reply many times while
    the receiver's TLS session tickets wait on its socket."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.arange(8_000_000, dtype="<f8")
    array[::997] = -1.5
    np.save(source, array)
    outcome = run_pair(backend, source, output, [*server_tls(pki), "--timeout", "20"],
                       ["--tls-ca", pki.ca, "--timeout", "20"])
    succeeded(outcome, source, output)


def test_tls_with_client_certificates_and_a_key(
    backend: Backend, tmp_path: Path, files: tuple[Path, Path], pki: Pki
) -> None:
    """The sender listens (the TLS server) and requires a client certificate;
    the key's opening runs inside TLS."""
    key = key_file(tmp_path, "shared.key", b"s3cret")
    outcome = run_pair(
        backend, *files,
        ["--tls-ca", pki.ca, *client_cert(pki.client), "--key-file", key],
        [*server_tls(pki), "--tls-ca", pki.ca, "--key-file", key],
        swap=True,
    )
    succeeded(outcome, *files)


def test_key_from_the_environment(backend: Backend, tmp_path: Path,
                                  files: tuple[Path, Path]) -> None:
    right = key_file(tmp_path, "right.key", b"from the environment")
    wrong = key_file(tmp_path, "wrong.key", b"another key")
    source, output = files
    succeeded(run_pair(backend, source, output, [], [], env={"ARRAYWIRE_KEY_FILE": right}),
              source, output)
    # --key-file wins over the variable; a receiver without either has no key
    output.unlink()
    outcome = run_pair(backend, source, output, ["--key-file", right], ["--key-file", right],
                       env={"ARRAYWIRE_KEY_FILE": wrong})
    succeeded(outcome, source, output)
    output.unlink()
    outcome = run_pair(backend, source, output, [], ["--key-file", right])
    failed(outcome, KEYED_SENDER_SAYS, KEYLESS_RECEIVER_SAYS)


# --- keys that do not match ---------------------------------------------------------

# Only one end uses a key: both say which, in plain words.
KEYED_SENDER_SAYS = (
    "the sender (this end) uses a key and the receiver does not: give arraywire recv the "
    "same key (--key-file or ARRAYWIRE_KEY_FILE)"
)
KEYLESS_RECEIVER_SAYS = (
    "the sender uses a key and the receiver (this end) does not: give this end the same "
    "key (--key-file or ARRAYWIRE_KEY_FILE)"
)
KEYLESS_SENDER_SAYS = (
    "the receiver uses a key and the sender (this end) does not: give this end the same "
    "key (--key-file or ARRAYWIRE_KEY_FILE)"
)
KEYED_RECEIVER_SAYS = (
    "the receiver (this end) uses a key and the sender does not: give arraywire send the "
    "same key (--key-file or ARRAYWIRE_KEY_FILE)"
)


@ROLES
def test_wrong_key_fails_both_ends(backend: Backend, tmp_path: Path, files: tuple[Path, Path],
                                   swap: bool) -> None:
    one = key_file(tmp_path, "one.key", b"one key")
    two = key_file(tmp_path, "two.key", b"another key")
    outcome = run_pair(backend, *files, ["--key-file", one], ["--key-file", two], swap=swap)
    failed(outcome, "authentication with the receiver failed: ",
           "authentication with the sender failed: ")
    assert not files[1].exists()


@ROLES
@pytest.mark.parametrize("keyed", ["sender", "receiver"])
def test_key_on_one_side_only(backend: Backend, tmp_path: Path, files: tuple[Path, Path],
                              keyed: str, swap: bool) -> None:
    key = ["--key-file", key_file(tmp_path, "shared.key", b"s3cret")]
    if keyed == "sender":
        outcome = run_pair(backend, *files, [], key, swap=swap)
        # the receiver answers the hello with its own, which has no key
        failed(outcome, KEYED_SENDER_SAYS, KEYLESS_RECEIVER_SAYS)
    else:
        outcome = run_pair(backend, *files, key, [], swap=swap)
        failed(outcome, KEYLESS_SENDER_SAYS, KEYED_RECEIVER_SAYS)
    assert not files[1].exists()


# --- TLS on one side only -------------------------------------------------------------

TLS_ON_ONE_SIDE = {
    # case: (receiver's options, sender's options, swap, sender says, receiver says)
    "tls-sender": (
        [], ["--tls-ca", "{ca}"], False,
        "the receiver does not use TLS: run arraywire recv with --tls-cert and --tls-key",
        "the sender uses TLS and this end does not: give this end --tls-cert and --tls-key",
    ),
    "tls-receiver": (
        ["{server}"], [], False,
        "the receiver refused: the receiver uses TLS: run arraywire send with --tls too",
        "the sender does not use TLS: run arraywire send with --tls too",
    ),
    "tls-receiver-connects": (
        ["--tls-ca", "{ca}"], [], True,
        "the receiver uses TLS and this end does not: give this end --tls too",
        "the sender does not use TLS: run arraywire send with --tls-cert and --tls-key",
    ),
    "tls-sender-with-keys": (
        ["--key-file", "{key}"], ["--tls-ca", "{ca}", "--key-file", "{key}"], False,
        "the receiver does not use TLS",
        "the sender uses TLS and this end does not: give this end --tls-cert and --tls-key",
    ),
    "tls-receiver-with-keys": (
        ["{server}", "--key-file", "{key}"], ["--key-file", "{key}"], False,
        "the receiver refused: the receiver uses TLS",
        "the sender does not use TLS",
    ),
    # a plain receiver sends nothing first: the TLS sender waits out its timeout
    "tls-sender-listens": (
        [], ["{server}", "--timeout", "2"], True,
        "the TLS handshake with the receiver did not complete within 2 s (does it use TLS?",
        "the sender closed the connection before sending an array",
    ),
}


@pytest.mark.parametrize("case", list(TLS_ON_ONE_SIDE))
def test_tls_on_one_side_only(backend: Backend, tmp_path: Path, files: tuple[Path, Path],
                              pki: Pki, case: str) -> None:
    recv_args, send_args, swap, sender_says, receiver_says = TLS_ON_ONE_SIDE[case]
    key = key_file(tmp_path, "shared.key", b"s3cret")

    def expand(args: list[str]) -> list[str]:
        expanded: list[str] = []
        for arg in args:
            if arg == "{server}":
                expanded += server_tls(pki)
            else:
                expanded.append(arg.format(ca=pki.ca, key=key))
        return expanded

    outcome = run_pair(backend, *files, expand(recv_args), expand(send_args), swap=swap)
    failed(outcome, sender_says, receiver_says)
    assert not files[1].exists()


# --- certificates ------------------------------------------------------------------------


CERTIFICATE_FAILURES = {
    # case: (receiver's extra options, sender's options, sender says, receiver says)
    "unknown-ca": (
        [], ["--tls-ca", "{other_ca}"],
        "cannot verify the receiver's TLS certificate: unable to get local issuer certificate",
        "the sender rejected this end's TLS certificate (TLSV1_ALERT_UNKNOWN_CA",
    ),
    "system-store": (
        [], ["--tls"],
        "cannot verify the receiver's TLS certificate: ",
        "the sender rejected this end's TLS certificate (",
    ),
    "wrong-host": (
        ["--tls-cert", "{wrong_host}", "--tls-key", "{wrong_host}"], ["--tls-ca", "{ca}"],
        "cannot verify the receiver's TLS certificate: IP address mismatch, certificate is "
        "not valid for '127.0.0.1'",
        "the sender rejected this end's TLS certificate (",
    ),
    "no-client-certificate": (
        ["--tls-ca", "{ca}"], ["--tls-ca", "{ca}"],
        "the receiver requires a TLS certificate of this end: give it --tls-cert and --tls-key",
        "the sender presented no TLS certificate and --tls-ca requires one",
    ),
    "client-certificate-of-another-ca": (
        ["--tls-ca", "{ca}"], ["--tls-ca", "{ca}", "--tls-cert", "{stranger}",
                               "--tls-key", "{stranger}"],
        "the receiver rejected this end's TLS certificate (TLSV1_ALERT_UNKNOWN_CA",
        "cannot verify the sender's TLS certificate: ",
    ),
}


@pytest.mark.parametrize("case", list(CERTIFICATE_FAILURES))
def test_certificate_failures(backend: Backend, tmp_path: Path, files: tuple[Path, Path],
                              pki: Pki, case: str) -> None:
    recv_extra, send_args, sender_says, receiver_says = CERTIFICATE_FAILURES[case]
    names = {name: getattr(pki, name) for name in Pki.__dataclass_fields__}
    recv_args = [arg.format(**names) for arg in recv_extra]
    if "--tls-cert" not in recv_args:
        recv_args = server_tls(pki) + recv_args
    outcome = run_pair(backend, *files, recv_args, [arg.format(**names) for arg in send_args])
    failed(outcome, sender_says, receiver_says)
    assert not files[1].exists()


# --- bad options: one line before any connection -------------------------------------------

PYTHON = Backend("python", transport_py)


def test_bad_key_and_certificate_files(tmp_path: Path, files: tuple[Path, Path],
                                       pki: Pki) -> None:
    empty = key_file(tmp_path, "empty.key", b" \n")
    missing = str(tmp_path / "missing.pem")
    not_pem = key_file(tmp_path, "notes.pem", b"hello\n")
    source = str(files[0])
    cases = [
        (["send", source, "127.0.0.1:9", "--key-file", empty], None,
         f"the key file {empty} (--key-file) is empty"),
        (["send", source, "127.0.0.1:9", "--key-file", missing], None,
         f"cannot read the key file {missing} (--key-file): No such file or directory"),
        (["send", source, "127.0.0.1:9"], {"ARRAYWIRE_KEY_FILE": missing},
         f"cannot read the key file {missing} (ARRAYWIRE_KEY_FILE): No such file"),
        (["recv", "0", "--tls-cert", missing, "--tls-key", pki.server_key], None,
         f"cannot read --tls-cert {missing}: No such file or directory"),
        (["recv", "0", "--tls-cert", pki.server_cert, "--tls-key", pki.client], None,
         f"--tls-key {pki.client} is not the private key of the certificate in --tls-cert"),
        (["recv", "0", "--tls-cert", not_pem, "--tls-key", pki.server_key], None,
         "expected a PEM certificate (chain) and its PEM private key"),
        (["send", source, "127.0.0.1:9", "--tls-ca", not_pem], None,
         f"--tls-ca {not_pem} holds no PEM certificate"),
    ]
    for args, env, message in cases:
        if args[0] == "recv":
            args += ["-o", str(files[1])]
        status, err = Cli(PYTHON, *args, "-q", env=env).finish()
        assert status == 1, err
        assert message in one_error_line(err, args[0]), err
        assert "listening on" not in err  # refused before listening


def test_tls_options_that_do_not_go_together_exit_2(
    backend: Backend, files: tuple[Path, Path], pki: Pki
) -> None:
    """A bad command line, told by argparse's rule: usage, one line, exit 2."""
    source, output = map(str, files)
    cases = [
        (["recv", "0", "-o", output, "--tls-ca", pki.ca],
         "this end listens, so it is the TLS server: give it --tls-cert and --tls-key"),
        (["send", source, "0", "--listen", "--tls"],
         "this end listens, so it is the TLS server: give it --tls-cert and --tls-key"),
        (["recv", "0", "-o", output, "--tls-cert", pki.server_cert],
         "--tls-cert and --tls-key go together"),
        (["send", source, "127.0.0.1:9", "--tls-key", pki.server_key],
         "--tls-cert and --tls-key go together"),
    ]
    for args, message in cases:
        status, err = Cli(backend, *args, "-q").finish()
        assert status == 2, err
        assert message in usage_error(err, args[0])
    assert not files[1].exists()


# --- the library's message for a hello or TLS where a message should be ---------------------


def test_a_hello_or_tls_in_place_of_a_message_says_so() -> None:
    with pytest.raises(ProtocolError, match="the peer opened with a connection hello"):
        decode_preamble(hello.encode(hello.AUTH, hello.NONCE_BYTES))
    with pytest.raises(ProtocolError, match="the peer speaks TLS and this end does not"):
        decode_preamble(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5))
    with pytest.raises(ProtocolError, match="not an arraywire message: magic b'NOPE'"):
        decode_preamble(b"NOPE" + bytes(12))
