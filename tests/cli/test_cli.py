"""`arraywire send` / `arraywire recv` end to end: real processes on loopback,
both backends (chosen in each child's environment)."""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import pty
import re
import resource
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backends import Backend, backend_env
from sockets import receive_exactly

import arraywire
from arraywire._cli.common import ACK, LOG_INTERVAL, REFUSE, decimal_size, parse_size
from arraywire._cli.main import build_parser
from arraywire._wire.engine import plan_send

TIMEOUT = 60


_running: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    """A failed test leaves no child process or pipe behind."""
    yield
    while _running:
        proc = _running.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def cli_env(backend: Backend, extra: dict[str, str] | None) -> dict[str, str]:
    """The child's environment: the backend's, with no key file but one a test names."""
    env = backend_env(backend.name)
    env.pop("ARRAYWIRE_KEY_FILE", None)
    env.update(extra or {})
    return env


class Cli:
    """One `python -m arraywire ...` child process; its stderr is a pipe, or
    with terminal=True a pseudo-terminal 120 columns wide."""

    def __init__(self, backend: Backend, *args: str, limit_data: int | None = None,
                 limit_file: int | None = None, env: dict[str, str] | None = None,
                 terminal: bool = False) -> None:
        def limits() -> None:
            if limit_data is not None:
                resource.setrlimit(resource.RLIMIT_DATA, (limit_data, limit_data))
            if limit_file is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file, limit_file))

        stderr: int = subprocess.PIPE
        self.terminal: int | None = None
        if terminal:
            self.terminal, stderr = pty.openpty()
            fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "arraywire", *args],
                env=cli_env(backend, env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr,
                preexec_fn=limits if limit_data or limit_file else None,
            )
        finally:
            if terminal:
                os.close(stderr)  # the child's end
        _running.append(self.proc)
        self.err = self.proc.stderr.fileno() if self.terminal is None else self.terminal  # type: ignore[union-attr]
        self.early = b""

    def port(self) -> int:
        """The port from the 'listening on' line (the child listens on port 0)."""
        return int(self.wait_for(rb"listening on \S*:(\d+)")[1])

    def wait_for(self, pattern: bytes) -> re.Match[bytes]:
        """The first match of pattern in stderr, read as it comes."""
        deadline = time.monotonic() + TIMEOUT
        while not (match := re.search(pattern, self.early)):
            chunk = self._read(deadline)
            assert chunk, f"exited early: {self.early.decode()}"
            self.early += chunk
        return match

    def _read(self, deadline: float) -> bytes:
        """The next bytes of stderr; b"" at its end."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.err, selectors.EVENT_READ)
            assert selector.select(deadline - time.monotonic()), self.early.decode()
        try:
            return os.read(self.err, 4096)
        except OSError as exc:  # a terminal whose other end is closed
            assert exc.errno == errno.EIO
            return b""

    def dropped_or_done(self) -> bool:
        """Wait until this receiver drops a peer (then stop it: it would wait
        for the next) or exits; whether it dropped one."""
        deadline = time.monotonic() + TIMEOUT
        while b"arraywire recv: dropped " not in self.early:
            if self.proc.poll() is not None:
                return False
            chunk = self._read(deadline)
            if not chunk:
                return False
            self.early += chunk
        self.proc.send_signal(signal.SIGTERM)
        return True

    def finish(self) -> tuple[int, str]:
        try:
            if self.terminal is None:
                _, err = self.proc.communicate(timeout=TIMEOUT)
                self.early += err
            else:
                deadline = time.monotonic() + TIMEOUT
                while chunk := self._read(deadline):
                    self.early += chunk
                os.close(self.terminal)
                self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, self.early.decode()


def quiet_lines(stderr: str) -> list[str]:
    """A quiet run's output, less the listening line it always prints."""
    return [line for line in stderr.splitlines()
            if line.strip() and not re.match(r"arraywire (send|recv): listening on ", line)]


def one_error_line(stderr: str, command: str) -> str:
    """The whole output of a failed quiet run: one line, no traceback."""
    lines = quiet_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"arraywire {command}: error: "), stderr
    return lines[0]


def transfer(backend: Backend, source: Path, output: Path, *extra: str,
             swap: bool = False) -> tuple[tuple[int, str], tuple[int, str]]:
    """Run a receiver and a sender; return both (status, stderr)."""
    if swap:
        sender = Cli(backend, "send", str(source), "127.0.0.1:0", "--listen", *extra)
        receiver = Cli(backend, "recv", f"127.0.0.1:{sender.port()}", "-o", str(output),
                       "--connect", *extra)
    else:
        receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), *extra)
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", *extra)
    return sender.finish(), receiver.finish()


def same_file_contents(output: Path, source: Path) -> None:
    got = np.load(output)
    want = np.load(source)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.flags.f_contiguous == want.flags.f_contiguous
    assert got.tobytes(order="A") == want.tobytes(order="A")


ARRAYS = {
    "fortran-2d": lambda: np.asfortranarray(np.arange(600_000, dtype=">f8").reshape(600, 1000)),
    "scalar": lambda: np.array(-3, dtype="<i2"),
    "empty": lambda: np.zeros((0, 3), dtype="<c16"),
    "structured": lambda: np.array([(1, b"ab", 2.5)] * 1000,
                                   dtype=[("a", "<u4"), ("b", "S2"), ("c", "<f4")]),
}


def summary_pattern(done: str, path: Path, array: np.ndarray) -> str:
    """A summary line: the array, its bytes, the time and rate of the transfer."""
    return (rf"arraywire {done} {re.escape(str(path))}: {re.escape(str(array.dtype))} "
            rf"{re.escape(str(array.shape))}, {array.nbytes:,} bytes "
            r"in (?P<time>[\d.]+) (?P<time_unit>m?s) \((?P<rate>[\d.]+) (?P<rate_unit>[kMGT]?)B/s\)")


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_send_to_a_listening_receiver(backend: Backend, tmp_path: Path, kind: str) -> None:
    """stderr is a pipe here, as in a log: no bar, a summary on each side."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = ARRAYS[kind]()
    np.save(source, array)
    (send_status, send_err), (recv_status, recv_err) = transfer(backend, source, output)
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    same_file_contents(output, source)
    assert set(os.listdir(tmp_path)) == {"in.npy", "out.npy"}
    [sent] = send_err.splitlines()
    listening, wrote = recv_err.splitlines()
    assert re.fullmatch(summary_pattern("send: sent", source, array), sent), sent
    assert re.fullmatch(r"arraywire recv: listening on 127\.0\.0\.1:\d+", listening)
    assert re.fullmatch(summary_pattern("recv: wrote", output, array), wrote), wrote


def test_roles_swapped_and_quiet(backend: Backend, tmp_path: Path) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.random.default_rng(0).standard_normal((300, 70))
    np.save(source, array)
    # the listening sender prints its port even with --quiet on the receiver
    sender = Cli(backend, "send", str(source), "127.0.0.1:0", "--listen")
    receiver = Cli(backend, "recv", f"127.0.0.1:{sender.port()}", "-o", str(output),
                   "--connect", "--quiet")
    (send_status, send_err), (recv_status, recv_err) = sender.finish(), receiver.finish()
    assert (send_status, recv_status) == (0, 0)
    assert recv_err == ""
    same_file_contents(output, source)
    listening, sent = send_err.splitlines()
    assert listening.startswith("arraywire send: listening on 127.0.0.1:")
    assert re.fullmatch(summary_pattern("send: sent", source, array), sent), sent


def seconds_and_rate(match: re.Match[str]) -> tuple[float, float]:
    seconds = float(match["time"]) / (1000 if match["time_unit"] == "ms" else 1)
    rate = float(match["rate"]) * 1000 ** " kMGT".index(match["rate_unit"] or " ")
    return seconds, rate


@pytest.mark.parametrize("swap", [False, True], ids=["receiver-listens", "sender-listens"])
def test_summaries_time_the_transfer_alone(backend: Backend, tmp_path: Path,
                                           swap: bool) -> None:
    """Not the wait for the peer: the listening end waits 2 s for it here."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.arange(2_000_000, dtype="<f8")
    np.save(source, array)
    if swap:
        listening = Cli(backend, "send", str(source), "127.0.0.1:0", "--listen")
        port = listening.port()
        time.sleep(2)
        connecting = Cli(backend, "recv", f"127.0.0.1:{port}", "-o", str(output), "--connect")
        (send_status, send_err), (recv_status, recv_err) = listening.finish(), connecting.finish()
    else:
        listening = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output))
        port = listening.port()
        time.sleep(2)
        connecting = Cli(backend, "send", str(source), f"127.0.0.1:{port}")
        (send_status, send_err), (recv_status, recv_err) = connecting.finish(), listening.finish()
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    for done, path, err in (("send: sent", source, send_err), ("recv: wrote", output, recv_err)):
        match = re.search(summary_pattern(done, path, array), err)
        assert match, err
        seconds, rate = seconds_and_rate(match)
        assert seconds < 1.5, err
        # three digits each: the rate is the bytes over the time shown
        assert rate == pytest.approx(array.nbytes / seconds, rel=0.1), err


def test_the_bar_on_a_terminal_counts_in_decimal_units(backend: Backend, tmp_path: Path) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.ones(1_000_000)  # 8,000,000 bytes: 8.00MB, where MiB would show 7.63M
    np.save(source, array)
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), terminal=True)
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", terminal=True)
    (send_status, send_err), (recv_status, recv_err) = sender.finish(), receiver.finish()
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    for label, err in (("send in.npy", send_err), ("recv out.npy", recv_err)):
        assert re.search(rf"\r{label}: 100%\|.+\| 8\.00MB/8\.00MB \[[\d:<]+, "
                         r"[\d.]+[kMG]?B/s\]", err), err
        assert "7.63" not in err and "MiB" not in err
    assert re.search(summary_pattern("recv: wrote", output, array), recv_err)


def test_a_log_gets_plain_progress_lines(backend: Backend, receiver_dir: Path) -> None:
    """stderr not a terminal: a line every LOG_INTERVAL seconds while bytes
    move, no carriage returns. The test plays a sender that stalls."""
    output = receiver_dir / "out.npy"
    receiver = start_receiver(backend, output)
    fake = FakeSender(receiver.port(), np.ones(1_000_000))
    fake.sock.sendall(fake.header + fake.payload[:2_400_000])
    time.sleep(LOG_INTERVAL + 0.5)
    fake.sock.sendall(fake.payload[2_400_000:4_800_000])
    time.sleep(0.5)
    fake.sock.sendall(fake.payload[4_800_000:])
    assert receive_exactly(fake.sock, len(ACK)) == ACK
    fake.close()
    status, err = receiver.finish()
    assert status == 0, err
    assert "\r" not in err
    listening, progress, wrote = err.splitlines()
    assert listening.startswith("arraywire recv: listening on ")
    match = re.fullmatch(r"arraywire recv: out\.npy: (\d+)%, ([\d.]+) MB of 8\.00 MB "
                         r"\([\d.]+ [kM]?B/s\)", progress)
    assert match, progress
    assert 30 <= int(match[1]) <= 60 and float(match[2]) == pytest.approx(int(match[1]) / 12.5,
                                                                          abs=0.1)
    assert wrote.startswith("arraywire recv: wrote ")


@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="AddressSanitizer's shadow memory counts against RLIMIT_DATA",
)
def test_array_larger_than_the_memory_limit(backend: Backend, tmp_path: Path) -> None:
    """256 MB through processes whose heap may not grow past 128 MB: the file is
    memory-mapped on both sides, never copied into memory."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    array = np.lib.format.open_memmap(source, mode="w+", dtype="<f8", shape=(32 << 20,))
    array[:] = 1.25
    array[::4096] = np.arange(len(array[::4096]))
    array.flush()
    del array
    limit = 128 << 20
    receiver = Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), "-q", limit_data=limit)
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", "-q",
                 limit_data=limit)
    assert sender.finish() == (0, "")
    status, err = receiver.finish()
    assert (status, quiet_lines(err)) == (0, [])
    same_file_contents(output, source)


# --- bad input: one line, no traceback, non-zero exit ----------------------------


def test_missing_file_not_npy_and_object_dtype(backend: Backend, tmp_path: Path) -> None:
    text = tmp_path / "notes.npy"
    text.write_text("hello, not an array\n")
    archive = tmp_path / "pair.npz"
    np.savez(archive, a=np.zeros(3))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([1, "two", None], dtype=object), allow_pickle=True)
    cases = {
        str(tmp_path / "missing.npy"): "no such file",
        str(text): "is not a .npy file",
        str(archive): "is not a .npy file",
        str(objects): "holds Python objects",
        str(tmp_path): "is a directory",
    }
    for path, message in cases.items():
        status, err = Cli(backend, "send", path, "127.0.0.1:9", "-q").finish()
        assert status == 1
        assert message in one_error_line(err, "send")


def test_port_in_use_and_connection_refused(backend: Backend, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        status, err = Cli(backend, "recv", f"127.0.0.1:{port}", "-o",
                          str(tmp_path / "out.npy"), "-q").finish()
        assert status == 1
        assert "the port is in use" in one_error_line(err, "recv")
    # the port is free now and nothing listens there: refused until the timeout
    np.save(tmp_path / "in.npy", np.zeros(3))
    started = time.monotonic()
    status, err = Cli(backend, "send", str(tmp_path / "in.npy"), f"127.0.0.1:{port}",
                      "-q", "--timeout", "0.5").finish()
    assert time.monotonic() - started >= 0.5
    assert status == 1
    assert one_error_line(err, "send") == (
        f"arraywire send: error: cannot connect to 127.0.0.1:{port}: connection refused "
        "for 0.5 s (nothing listens there)"
    )
    assert not (tmp_path / "out.npy").exists()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.create_server((host, 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("swap", [False, True], ids=["sender-connects", "receiver-connects"])
def test_the_connecting_end_may_start_first(backend: Backend, tmp_path: Path,
                                            swap: bool) -> None:
    """It tries again while refused: with --timeout until that passes, without
    it until something listens."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.arange(100_000))
    port = free_port()
    if swap:
        connecting = Cli(backend, "recv", f"127.0.0.1:{port}", "-o", str(output), "--connect",
                         "--timeout", "30")
        until = "for up to 30 s"
    else:
        connecting = Cli(backend, "send", str(source), f"127.0.0.1:{port}")
        until = "until it does"
    connecting.wait_for(rf"nothing listens on 127\.0\.0\.1:{port} yet; trying again "
                        rf"{until}".encode())
    time.sleep(0.3)  # refused a few more times
    assert connecting.proc.poll() is None
    if swap:
        listening = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "--listen", "-q")
        (recv_status, recv_err), (send_status, send_err) = connecting.finish(), listening.finish()
    else:
        listening = Cli(backend, "recv", f"127.0.0.1:{port}", "-o", str(output), "-q")
        (send_status, send_err), (recv_status, recv_err) = connecting.finish(), listening.finish()
    assert (send_status, recv_status) == (0, 0), send_err + recv_err
    same_file_contents(output, source)


def ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")


@needs_ipv6
@pytest.mark.parametrize("swap", [False, True], ids=["receiver-listens", "sender-listens"])
def test_bracketed_ipv6_addresses(backend: Backend, tmp_path: Path, swap: bool) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.arange(100_000))
    if swap:
        listening = Cli(backend, "send", str(source), "[::1]:0", "--listen", "-q")
        port = listening.port()
        connecting = Cli(backend, "recv", f"[::1]:{port}", "-o", str(output), "--connect",
                         "-q")
    else:
        listening = Cli(backend, "recv", "[::1]:0", "-o", str(output), "-q")
        port = listening.port()
        connecting = Cli(backend, "send", str(source), f"[::1]:{port}", "-q")
    assert connecting.finish() == (0, "")
    status, err = listening.finish()
    command = "send" if swap else "recv"
    assert (status, err) == (0, f"arraywire {command}: listening on [::1]:{port}\n")
    same_file_contents(output, source)


@pytest.mark.skipif(not (socket.has_dualstack_ipv6() and ipv6_loopback()),
                    reason="no dual-stack IPv6 here")
@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost"])
def test_a_port_alone_listens_on_ipv4_and_ipv6(backend: Backend, tmp_path: Path,
                                               host: str) -> None:
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.arange(100_000))
    receiver = Cli(backend, "recv", "0", "-o", str(output), "-q")
    port = receiver.port()
    assert Cli(backend, "send", str(source), f"{host}:{port}", "-q").finish() == (0, "")
    assert receiver.finish() == (
        0, f"arraywire recv: listening on [::]:{port} (all interfaces, IPv4 and IPv6)\n"
    )
    same_file_contents(output, source)


def usage_error(stderr: str, command: str | None) -> str:
    """argparse's report of a bad command line: the usage, then one error line."""
    prog = f"arraywire {command}" if command else "arraywire"
    lines = stderr.splitlines()
    assert lines[0].startswith(f"usage: {prog} "), stderr
    assert lines[-1].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr and "listening on" not in stderr
    return lines[-1]


USAGE_ERRORS = [
    # (arguments, what the error line says)
    (["send", "IN", "5000"], "bad address '5000': connecting needs the receiver's HOST:PORT"),
    (["send", "IN", "::1:5000"],
     "bad address '::1:5000': an IPv6 address goes in brackets, as in [::1]:5000"),
    (["send", "IN", "[::1]5000"], "bad address '[::1]5000': expected PORT, HOST:PORT or "
                                  "[IPv6]:PORT"),
    (["send", "IN", "host:70000"], "bad address 'host:70000': port 70000 is over 65535"),
    (["send", "IN", "127.0.0.1:0"], "bad address '127.0.0.1:0': port 0 is for listening"),
    (["send", "IN"], "the following arguments are required: address"),
    (["recv", "0", "-o", "OUT", "--connect"],
     "bad address '0': connecting needs the sender's HOST:PORT"),
    (["recv", "127.0.0.1", "-o", "OUT"],
     "bad address '127.0.0.1': expected PORT, HOST:PORT or [IPv6]:PORT"),
    (["recv", "0", "-o", "OUT", "--max-bytes", "lots"], "not a size: 'lots'"),
    (["recv", "0", "-o", "OUT", "--max-bytes=-5MB"], "not a size: '-5MB'"),
    (["recv", "0", "-o", "OUT", "--timeout", "0"], "not a number of seconds above 0: '0'"),
    (["recv", "0", "-o", "OUT", "--timeout", "soon"], "not a number of seconds above 0"),
    (["recv", "0"], "the following arguments are required: -o/--output"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS,
                         ids=[" ".join(args) for args, _ in USAGE_ERRORS])
def test_a_bad_command_line_exits_2(backend: Backend, tmp_path: Path, args: list[str],
                                    message: str) -> None:
    np.save(tmp_path / "in.npy", np.zeros(3))
    paths = {"IN": str(tmp_path / "in.npy"), "OUT": str(tmp_path / "out.npy")}
    status, err = Cli(backend, *[paths.get(arg, arg) for arg in args]).finish()
    assert status == 2
    assert message in usage_error(err, args[0])
    assert os.listdir(tmp_path) == ["in.npy"]


def test_no_command_or_an_unknown_option_exits_2(backend: Backend, tmp_path: Path) -> None:
    status, err = Cli(backend).finish()
    assert status == 2
    assert "the following arguments are required: command" in usage_error(err, None)
    # argparse reports unknown options at the top level
    status, err = Cli(backend, "recv", "0", "-o", str(tmp_path / "out.npy"), "--bogus").finish()
    assert status == 2
    assert "unrecognized arguments: --bogus" in usage_error(err, None)
    assert os.listdir(tmp_path) == []


def test_an_existing_output_is_kept(backend: Backend, tmp_path: Path) -> None:
    """A failure, not a bad command line: exit 1, before listening."""
    (tmp_path / "out.npy").write_bytes(b"precious")
    status, err = Cli(backend, "recv", "0", "-o", str(tmp_path / "out.npy"), "-q").finish()
    assert status == 1
    assert "exists (use --force" in one_error_line(err, "recv")
    assert "listening on" not in err
    assert (tmp_path / "out.npy").read_bytes() == b"precious"


def run_arraywire(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "arraywire", *args],
                          env=cli_env(backend, None), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def test_version_names_the_backend(backend: Backend) -> None:
    done = run_arraywire(backend, "--version")
    why = "compiled" if backend.name == "c" else "pure Python: ARRAYWIRE_NO_EXTENSIONS is set"
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"arraywire {arraywire.__version__}, backend {backend.name} ({why})\n", ""
    )


@pytest.mark.parametrize("command", ["", "send", "recv", "bench"])
def test_help_shows_examples_that_parse(backend: Backend, command: str) -> None:
    done = run_arraywire(backend, *command.split(), "--help")
    assert (done.returncode, done.stderr) == (0, "")
    examples = done.stdout.split("\nexamples:\n", 1)[1]
    lines = [line for line in examples.splitlines() if line.startswith("  arraywire ")]
    assert len(lines) >= 2, done.stdout
    for line in lines:
        # kept as written, not re-wrapped: the command, two spaces, what it does
        example = re.split(r"\s{2,}", line.strip())[0]
        assert example.startswith(f"arraywire {command}".rstrip()), line
        args = build_parser().parse_args(shlex.split(example)[1:])
        assert args.command == (command or args.command)


def test_decimal_size() -> None:
    """Three significant digits in powers of 1000, as tqdm's bar shows sizes."""
    assert decimal_size(0) == "0.00 B"
    assert decimal_size(999) == "999 B"
    assert decimal_size(999.6) == "1.00 kB"
    assert decimal_size(400_000_000) == "400 MB"
    assert decimal_size(9_996_000) == "10.0 MB"
    assert decimal_size(1.2903e9, "B/s") == "1.29 GB/s"


def test_parse_size() -> None:
    """Decimal units, as the bar and the summaries show sizes; binary ones
    when asked for by name; fractions of either."""
    assert parse_size("123") == 123
    assert parse_size("123B") == 123
    assert parse_size("4K") == parse_size("4kB") == parse_size("4 kb") == 4_000
    assert parse_size("500MB") == parse_size("500M") == 500_000_000
    assert parse_size("60G") == 60_000_000_000
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size("1.1MB") == 1_100_000
    assert parse_size(".5k") == 500
    assert parse_size("4KiB") == parse_size("4Ki") == 4096
    assert parse_size("7.6MiB") == int(7.6 * 2**20)
    assert parse_size("2TiB") == 2 << 40
    for bad in ("", "MB", "1.2.3M", "5 XB", "-1", "1e9", "5MiBB", "1,000"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
            parse_size(bad)


class FakeSender:
    """The test itself plays the sender: a real header, then what it likes."""

    def __init__(self, port: int, array: np.ndarray) -> None:
        plan = plan_send([array])
        self.header, self.total = plan.header, plan.total
        self.payload = array.tobytes()
        self.sock = socket.create_connection(("127.0.0.1", port))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # whatever happened, no partial file is left behind
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


def start_receiver(backend: Backend, output: Path, *extra: str, **limits: Any) -> Cli:
    return Cli(backend, "recv", "127.0.0.1:0", "-o", str(output), *extra, **limits)


def test_sender_vanishes_mid_array(backend: Backend, receiver_dir: Path) -> None:
    output = receiver_dir / "out.npy"
    receiver = start_receiver(backend, output)
    fake = FakeSender(receiver.port(), np.ones(1_000_000))
    fake.sock.sendall(fake.header + fake.payload[:300_000])
    fake.close()
    status, err = receiver.finish()
    assert status == 1 and "Traceback" not in err
    assert err.rstrip().splitlines()[-1] == (
        "arraywire recv: error: the sender closed the connection after 300,000 of "
        "8,000,000 bytes of the array"
    )
    assert not output.exists()


def test_terminated_receiver_removes_its_partial_file(
    backend: Backend, receiver_dir: Path
) -> None:
    output = receiver_dir / "out.npy"
    receiver = start_receiver(backend, output, "-q")
    fake = FakeSender(receiver.port(), np.ones(1_000_000))
    fake.sock.sendall(fake.header + fake.payload[:300_000])
    deadline = time.monotonic() + TIMEOUT
    while not (receiver_dir / "out.npy.partial").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    receiver.proc.send_signal(signal.SIGTERM)
    status, err = receiver.finish()
    fake.close()
    assert status == 130, err
    assert "interrupted" in one_error_line(err, "recv")
    assert not output.exists()


def test_receiver_refuses_bad_or_oversized_messages(
    backend: Backend, receiver_dir: Path
) -> None:
    output = receiver_dir / "out.npy"
    receiver = start_receiver(backend, output, "-q", "--max-bytes", "7.6MiB")
    fake = FakeSender(receiver.port(), np.ones(1_000_000))
    fake.sock.sendall(fake.header)
    reason = "the array is 8,000,000 bytes, over its --max-bytes of 7,969,177"
    reply = REFUSE + struct.pack("<I", len(reason)) + reason.encode()
    assert receive_exactly(fake.sock, len(reply)) == reply
    fake.close()
    status, err = receiver.finish()
    assert status == 1
    assert one_error_line(err, "recv").endswith(f"refused the sender's array: {reason}")

    # a header that is not one: the sender is told why, the receiver waits for the next
    receiver = start_receiver(backend, output, "-q", "--timeout", "1")
    with socket.create_connection(("127.0.0.1", receiver.port())) as bad:
        bad.sendall(b"AWIR\x09" + bytes(11))
        reply = receive_exactly(bad, 8)
        assert reply[:4] == REFUSE
        assert b"protocol version 9" in receive_exactly(bad, struct.unpack("<I", reply[4:])[0])
        status, err = receiver.finish()
    assert status == 1
    dropped, last = quiet_lines(err)
    assert re.fullmatch(r"arraywire recv: dropped 127\.0\.0\.1:\d+: refused the sender's "
                        r"array: message of protocol version 9; .*", dropped), err
    assert last == "arraywire recv: error: nobody connected within 1 s"
    assert not output.exists()


HELLO = struct.Struct("<4sBBHII")


def wait_closed(sock: socket.socket) -> None:
    """Read until the receiver closes the connection (it dropped this peer)."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:  # closed with this peer's bytes unread
        pass


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "key"])
def test_a_listening_receiver_survives_scans_probes_and_silence(
    backend: Backend, tmp_path: Path, keyed: bool
) -> None:
    """A scan, an HTTP probe, garbage, a silent hello and (with a key) a sender
    with another key are each dropped in one line; the real sender then gets
    through and both exit 0."""
    source, output = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.arange(100_000, dtype="<f8"))
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    k1.write_bytes(b"the right key")
    k2.write_bytes(b"another key")
    key = ["--key-file", str(k1)] if keyed else []
    receiver = start_receiver(backend, output, "-q", "--handshake-timeout", "1", *key)
    port = receiver.port()
    lines: list[bytes] = []

    def next_drop(why: bytes) -> None:
        match = receiver.wait_for(rb"arraywire recv: dropped 127\.0\.0\.1:\d+: [^\n]*\n")
        line = match[0]
        receiver.early = receiver.early[match.end():]  # the next search starts after it
        assert why in line, line
        lines.append(line)

    socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()  # a port scan
    # a keyed receiver's hello may meet the closed socket: closed, or reset
    next_drop(b" the connection during the opening")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        next_drop(b": not an arraywire peer (b'GET ')")
        wait_closed(http)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as garbage:
        garbage.sendall(np.random.default_rng(7).bytes(600).replace(b"AW", b"xx"))
        next_drop(b": not an arraywire peer (")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as silent:
        # a genuine hello (with a key: and its nonce), then nothing
        if keyed:
            silent.sendall(HELLO.pack(b"AWHI", 1, 2, 0x0001, 32, 0) + os.urandom(32))
            next_drop(b": the sender did not complete the connection opening within 1 s")
        else:
            silent.sendall(HELLO.pack(b"AWHI", 1, 2, 0, 0, 0))
            next_drop(b": no array's header within 1 s")
        wait_closed(silent)
    assert 0.9 < time.monotonic() - started < 5
    if keyed:
        wrong = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q",
                    "--key-file", str(k2))
        status, err = wrong.finish()
        assert status == 1
        assert "authentication with the receiver failed" in one_error_line(err, "send")
        next_drop(b": authentication with the sender failed: the connecting peer's key differs")
    assert receiver.proc.poll() is None  # still waiting
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q", *key)
    assert sender.finish() == (0, "")
    status, err = receiver.finish()
    assert status == 0, err
    same_file_contents(output, source)
    assert len(lines) == (5 if keyed else 4)
    assert not [line for line in err.splitlines() if line.strip()], err  # all read above


def test_receiver_vanishes_mid_array(backend: Backend, tmp_path: Path) -> None:
    """The test plays a receiver that reads a little and hangs up."""
    source = tmp_path / "in.npy"
    np.save(source, np.ones(4_000_000))
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        conn.recv(100_000)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # with unread data: a reset
        status, err = sender.finish()
    assert status == 1
    line = one_error_line(err, "send")
    assert re.search(r"the receiver closed the connection (after [\d,]+ of 32,000,000 bytes "
                     r"of the array$|"
                     r"without confirming)", line), line


def test_sender_needs_the_receivers_confirmation(backend: Backend, tmp_path: Path) -> None:
    """A receiver that takes every byte but does not confirm the write is a failure."""
    source = tmp_path / "in.npy"
    np.save(source, np.arange(1000))
    total = plan_send([np.arange(1000)]).total
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        with conn:
            receive_exactly(conn, total)
            conn.shutdown(socket.SHUT_WR)
            status, err = sender.finish()
        assert status == 1
        assert "without confirming" in one_error_line(err, "send")
        # and one that confirms is a success
        sender = Cli(backend, "send", str(source), f"127.0.0.1:{server.getsockname()[1]}",
                     "-q")
        conn, _ = server.accept()
        with conn:
            receive_exactly(conn, total)
            conn.sendall(ACK)
            assert sender.finish() == (0, "")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_disk_full(backend: Backend, small_disk: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.npy"
    np.save(source, np.ones(2_000_000))  # 16 MB for a 2 MiB disk
    output = small_disk / "out.npy"
    receiver = start_receiver(backend, output, "-q")
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", "-q")
    status, err = receiver.finish()
    assert status == 1
    assert re.search(r"not enough disk space in \S+: the array needs 16,000,000 bytes, "
                     r"[\d,]+ are free", one_error_line(err, "recv"))
    assert os.listdir(small_disk) == []
    status, err = sender.finish()
    assert status == 1
    assert "the receiver refused: not enough disk space in" in one_error_line(err, "send")


def test_file_size_limit_while_creating_the_output(
    backend: Backend, receiver_dir: Path, tmp_path: Path
) -> None:
    """Space that runs out after the free-space check (here RLIMIT_FSIZE makes
    the allocation fail) is reported, and nothing is left behind."""
    source = tmp_path / "in.npy"
    np.save(source, np.ones(500_000))
    output = receiver_dir / "out.npy"
    receiver = start_receiver(backend, output, "-q", limit_file=1 << 20)
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", "-q")
    status, err = receiver.finish()
    assert status == 1
    assert "cannot create" in one_error_line(err, "recv")
    assert "File too large" in err
    assert sender.finish()[0] == 1
    assert not output.exists()


def test_timeouts(backend: Backend, receiver_dir: Path) -> None:
    output = receiver_dir / "out.npy"
    status, err = start_receiver(backend, output, "-q", "--timeout", "0.3").finish()
    assert status == 1
    assert "nobody connected within 0.3 s" in one_error_line(err, "recv")
    # a sender that stalls part-way
    receiver = start_receiver(backend, output, "-q", "--timeout", "0.3")
    fake = FakeSender(receiver.port(), np.ones(1_000_000))
    fake.sock.sendall(fake.header + fake.payload[:300_000])
    status, err = receiver.finish()
    fake.close()
    assert status == 1
    assert "nothing moved for 0.3 s" in one_error_line(err, "recv")
    assert not output.exists()


@pytest.mark.parametrize("size", [1_000, 1_000_000], ids=["small", "large"])
def test_sender_prints_the_receivers_refusal(backend: Backend, receiver_dir: Path, size: int) -> None:
    """Small arrays are all sent before the refusal is read; large ones stop early."""
    source = receiver_dir / "in.npy"
    np.save(source, np.ones(size))
    receiver = start_receiver(backend, receiver_dir / "out.npy", "-q", "--max-bytes", "1kB")
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{receiver.port()}", "-q")
    sent, sent_err = sender.finish()
    assert (sent, receiver.finish()[0]) == (1, 1)
    assert one_error_line(sent_err, "send") == (
        f"arraywire send: error: the receiver refused: the array is {size * 8:,} bytes, "
        "over its --max-bytes of 1,000"
    )


RECV_ARRAY_PROGRAM = """
import socket, sys
import arraywire
with socket.create_server(("127.0.0.1", 0)) as server:
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    with conn:
        array = arraywire.recv_array(conn)
        if sys.argv[1] == "confirm":
            conn.sendall(b"AWOK")
        print(array.sum(), flush=True)
"""


@pytest.mark.parametrize("confirm", [True, False], ids=["confirms", "no-confirm"])
def test_sending_to_a_recv_array_program(backend: Backend, tmp_path: Path, confirm: bool) -> None:
    source = tmp_path / "in.npy"
    np.save(source, np.arange(1000))
    program = subprocess.Popen(
        [sys.executable, "-c", RECV_ARRAY_PROGRAM, "confirm" if confirm else "silent"],
        env=backend_env(backend.name), stdout=subprocess.PIPE, text=True,
    )
    _running.append(program)  # type: ignore[arg-type]
    assert program.stdout is not None
    port = int(program.stdout.readline())
    extra = () if confirm else ("--no-confirm",)
    sender = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q", *extra)
    assert sender.finish() == (0, "")
    assert program.communicate(timeout=TIMEOUT)[0].split() == [str(sum(range(1000)))]


def test_an_unconfirmed_send_says_how_to_confirm(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "in.npy"
    np.save(source, np.arange(1000))
    program = subprocess.Popen(
        [sys.executable, "-c", RECV_ARRAY_PROGRAM, "silent"],
        env=backend_env(backend.name), stdout=subprocess.PIPE, text=True,
    )
    _running.append(program)  # type: ignore[arg-type]
    assert program.stdout is not None
    port = int(program.stdout.readline())
    status, err = Cli(backend, "send", str(source), f"127.0.0.1:{port}", "-q").finish()
    assert status == 1
    assert "confirms by sending b'AWOK', or pass --no-confirm" in one_error_line(err, "send")
