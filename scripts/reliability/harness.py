"""Shared pieces of the reliability scripts (faults.py, soak.py).

- stubs(): the Python gRPC modules for proto/posed/v1/posed.proto (and a
  minimal grpc.health.v1), generated at run time with grpcio-tools into a
  cache folder keyed by the proto's hash; nothing generated is committed.
- Daemon: `posed serve` as a child process on the tiny fixture weights, on
  a free loopback port and/or a Unix socket, with its RSS and open fd count
  read from /proc (macOS: ps and lsof).
- jpeg()/png(): small synthetic pictures, encoded here so the scripts need
  no imaging library.
"""

import hashlib
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO_ROOT = REPO / "proto"
POSED_PROTO = PROTO_ROOT / "posed" / "v1" / "posed.proto"

# grpc.health.v1's two messages and service, as the daemon serves them
# (tonic-health). Only Check is used. The file name keeps the generated
# module out of the installed `grpc` package's namespace.
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus {
    UNKNOWN = 0;
    SERVING = 1;
    NOT_SERVING = 2;
    SERVICE_UNKNOWN = 3;
  }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
}
"""

SERVICE = "posed.v1.PoseService"


class Stubs:
    """The generated modules: pb (messages), rpc (PoseServiceStub),
    health_pb, health_rpc."""

    def __init__(self, pb, rpc, health_pb, health_rpc):
        self.pb, self.rpc, self.health_pb, self.health_rpc = pb, rpc, health_pb, health_rpc


_stubs = None


def cache_root() -> Path:
    env = os.environ.get("POSED_RELIABILITY_CACHE")
    return Path(env) if env else REPO / "target" / "reliability-cache"


def stubs() -> Stubs:
    """Generates (once per proto version) and imports the stubs."""
    global _stubs
    if _stubs is not None:
        return _stubs
    import grpc_tools
    from grpc_tools import protoc

    key = hashlib.sha256(
        POSED_PROTO.read_bytes() + HEALTH_PROTO.encode() + grpc_tools.__file__.encode()
    ).hexdigest()[:16]
    out = cache_root() / f"stubs-{key}"
    if not (out / "done").exists():
        cache_root().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="stubs-", dir=cache_root()))
        (tmp / "reliability_health.proto").write_text(HEALTH_PROTO)
        include = Path(grpc_tools.__file__).parent / "_proto"
        for proto, root in (("posed/v1/posed.proto", PROTO_ROOT), ("reliability_health.proto", tmp)):
            rc = protoc.main([
                "protoc",
                f"-I{root}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(root / proto),
            ])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {proto} ({rc})")
        (tmp / "done").write_text("")
        try:
            tmp.rename(out)
        except OSError:  # another run got there first
            shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(out))
    from posed.v1 import posed_pb2, posed_pb2_grpc
    import reliability_health_pb2
    import reliability_health_pb2_grpc

    _stubs = Stubs(posed_pb2, posed_pb2_grpc, reliability_health_pb2, reliability_health_pb2_grpc)
    return _stubs


# ---------------------------------------------------------------------------
# The daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixtures_dir() -> Path:
    env = os.environ.get("POSED_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


def posed_binary() -> Path:
    env = os.environ.get("POSED_BIN")
    return Path(env) if env else REPO / "target" / "debug" / "posed"


HAND_FILES = (
    "detector_weights.safetensors",
    "detector_config.json",
    "wilor_weights.safetensors",
    "wilor_config.json",
    "mano.npz",
)


def models_dir(into: Path) -> Path:
    """A hand models folder with the tiny fixture weights (symlinks)."""
    src = fixtures_dir() / "hands"
    out = into / "models"
    out.mkdir(parents=True, exist_ok=True)
    for f in HAND_FILES:
        if not (src / f).exists():
            raise FileNotFoundError(f"fixture {src / f} missing (set POSED_FIXTURES)")
        link = out / f
        if not link.exists():
            link.symlink_to(src / f)
    return out


class Daemon:
    """`posed serve` on the fixture weights.

    `port`/`socket_path` stay fixed across restart(), so a restart binds the
    same address as the process it replaces. `env` adds POSED_* settings.
    """

    def __init__(self, workdir: Path, port=None, socket_path=None, env=None, binary=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.socket_path = str(socket_path) if socket_path else None
        self.binary = Path(binary) if binary else posed_binary()
        self.extra_env = dict(env or {})
        self.proc = None
        self.starts = 0
        self.log_path = None

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def uds(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self):
        if not self.binary.exists():
            raise FileNotFoundError(f"{self.binary} missing: cargo build --bin posed (or set POSED_BIN)")
        env = dict(os.environ)
        env.update({
            "POSED_HANDS_MODELS_DIR": str(models_dir(self.workdir)),
            "POSED_SERVER_LISTEN": self.tcp,
            "POSED_SERVER_SOCKET": self.socket_path or "",
            "POSED_SERVER_METRICS": "",
            "POSED_LOG_TELEMETRY_INTERVAL_S": "0",
            "HF_HUB_OFFLINE": "1",
        })
        env.update(self.extra_env)
        self.starts += 1
        self.log_path = self.workdir / f"posed-{self.starts}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self, timeout=120.0, target=None) -> float:
        """Seconds until health reports PoseService SERVING over `target`
        (TCP by default). Raises if the process exits or time runs out."""
        import grpc

        s = stubs()
        t0 = time.monotonic()
        target = target or self.tcp
        while True:
            if not self.alive():
                raise RuntimeError(f"daemon exited ({self.proc.returncode}) before serving:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"daemon not SERVING after {timeout:.0f} s:\n{self.log_tail()}")
            try:
                with grpc.insecure_channel(target) as ch:
                    reply = s.health_rpc.HealthStub(ch).Check(
                        s.health_pb.HealthCheckRequest(service=SERVICE), timeout=2
                    )
                    if reply.status == s.health_pb.HealthCheckResponse.SERVING:
                        return time.monotonic() - t0
            except grpc.RpcError:
                pass
            time.sleep(0.1)

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL, then reap."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self):
        return self.start()

    def log_tail(self, n=20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return ""
        return "\n".join(lines[-n:])

    def rss_mb(self):
        return rss_mb(self.proc.pid) if self.alive() else None

    def fds(self):
        return fd_count(self.proc.pid) if self.alive() else None


def rss_mb(pid: int):
    """Resident set size in MiB, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip()) / 1024.0
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return None


def fd_count(pid: int):
    """Open file descriptors, or None if unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["lsof", "-p", str(pid)], capture_output=True, text=True, timeout=10)
            return max(0, len(out.stdout.splitlines()) - 1)
        except (OSError, subprocess.SubprocessError):
            pass
    return None


# ---------------------------------------------------------------------------
# Client helpers


def channel(target: str, options=None):
    """A grpcio channel to `target` ("127.0.0.1:port" or "unix:/path"),
    with no authority option unless the caller passes one."""
    import grpc

    return grpc.insecure_channel(target, options=list(options or []))


def percentile(sorted_values, q):
    """The q-quantile (0..1) of an ascending list, nearest rank; None if empty."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


class Reader(threading.Thread):
    """Reads a server stream (Subscribe, PushStream replies) in the
    background, counting messages and noting how it ended."""

    def __init__(self, call, name="reader"):
        super().__init__(name=name, daemon=True)
        self.call = call
        self.count = 0
        self.last = None
        self.ended = None  # "ok" or a grpc.StatusCode name
        self.ended_at = None
        self.start()

    def run(self):
        import grpc

        try:
            for msg in self.call:
                self.count += 1
                self.last = msg
            self.ended = "OK"
        except grpc.RpcError as e:
            self.ended = e.code().name if e.code() else "UNKNOWN"
        self.ended_at = time.monotonic()

    def cancel(self):
        self.call.cancel()


# ---------------------------------------------------------------------------
# Synthetic pictures


def picture(width: int, height: int, phase: float = 0.0):
    """Rows of (r, g, b): a diagonal gradient with a skin-toned disc that
    moves with `phase` (so successive frames differ)."""
    cx = width * (0.5 + 0.3 * math.cos(phase))
    cy = height * (0.5 + 0.3 * math.sin(phase))
    rad2 = (min(width, height) * 0.2) ** 2
    rows = []
    for y in range(height):
        row = []
        for x in range(width):
            if (x - cx) ** 2 + (y - cy) ** 2 < rad2:
                row.append((224, 172, 140))
            else:
                row.append(((x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), 96))
        rows.append(row)
    return rows


def png(rows) -> bytes:
    """An 8-bit RGB PNG of `rows`."""
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# A baseline JPEG encoder, enough for test pictures: YCbCr 4:4:4, one scan,
# quantisation at a fixed quality, and "flat" Huffman tables (every DC
# category a 4-bit code, every AC symbol an 8-bit code). Flat codes cost
# some size but are valid for any decoder and need no table of the
# standard's statistics.

_ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]
_COS = [[math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)]
_C = [math.sqrt(0.5)] + [1.0] * 7
_DC_SYMBOLS = list(range(12))
_AC_SYMBOLS = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]


def _quant(quality=85):
    # A smooth table (step grows with frequency), scaled like libjpeg's quality.
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return [max(1, min(255, int((8 + 4 * (i // 8 + i % 8)) * scale / 100))) for i in range(64)]


class _Bits:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, length):
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)  # byte stuffing
        self.acc &= (1 << self.n) - 1

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with ones
        return bytes(self.out)


def _category(v):
    v = abs(v)
    n = 0
    while v:
        n += 1
        v >>= 1
    return n


def _fdct(block):
    out = [0.0] * 64
    tmp = [[0.0] * 8 for _ in range(8)]
    for y in range(8):
        row = block[y * 8:(y + 1) * 8]
        for u in range(8):
            cu = _COS[u]
            tmp[y][u] = sum(row[x] * cu[x] for x in range(8))
    for u in range(8):
        for v in range(8):
            cv = _COS[v]
            out[v * 8 + u] = 0.25 * _C[u] * _C[v] * sum(tmp[y][u] * cv[y] for y in range(8))
    return out


def jpeg(rows, quality=85) -> bytes:
    """A baseline JPEG of `rows` (any size; edges are padded)."""
    height, width = len(rows), len(rows[0])
    q = _quant(quality)
    ycc = [[], [], []]
    for row in rows:
        for c in ycc:
            c.append([])
        for r, g, b in row:
            ycc[0][-1].append(0.299 * r + 0.587 * g + 0.114 * b - 128)
            ycc[1][-1].append(-0.168736 * r - 0.331264 * g + 0.5 * b)
            ycc[2][-1].append(0.5 * r - 0.418688 * g - 0.081312 * b)
    dc_codes = {s: (i, 4) for i, s in enumerate(_DC_SYMBOLS)}
    ac_codes = {s: (i, 8) for i, s in enumerate(_AC_SYMBOLS)}
    bits = _Bits()
    prev = [0, 0, 0]
    for by in range(0, height, 8):
        for bx in range(0, width, 8):
            for ci in range(3):
                plane = ycc[ci]
                block = [
                    plane[min(by + y, height - 1)][min(bx + x, width - 1)]
                    for y in range(8) for x in range(8)
                ]
                coef = _fdct(block)
                zz = [int(round(coef[_ZIGZAG[k]] / q[_ZIGZAG[k]])) for k in range(64)]
                diff = zz[0] - prev[ci]
                prev[ci] = zz[0]
                cat = _category(diff)
                bits.put(*dc_codes[cat])
                if cat:
                    bits.put(diff if diff > 0 else diff + (1 << cat) - 1, cat)
                run = 0
                for k in range(1, 64):
                    v = zz[k]
                    if v == 0:
                        run += 1
                        continue
                    while run > 15:
                        bits.put(*ac_codes[0xF0])
                        run -= 16
                    cat = min(_category(v), 10)
                    v = max(-1023, min(1023, v))
                    bits.put(*ac_codes[(run << 4) | cat])
                    bits.put(v if v > 0 else v + (1 << cat) - 1, cat)
                    run = 0
                if run:
                    bits.put(*ac_codes[0x00])
    scan = bits.flush()

    def segment(marker, data):
        return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data

    dqt = bytes([0]) + bytes(q[_ZIGZAG[k]] for k in range(64))
    sof = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])

    def dht(cls_id, symbols, length):
        counts = [0] * 16
        counts[length - 1] = len(symbols)
        return bytes([cls_id]) + bytes(counts) + bytes(symbols)

    sos = bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])
    return (
        b"\xff\xd8"
        + segment(0xDB, dqt)
        + segment(0xC0, sof)
        + segment(0xC4, dht(0x00, _DC_SYMBOLS, 4))
        + segment(0xC4, dht(0x10, _AC_SYMBOLS, 8))
        + segment(0xDA, sos)
        + scan
        + b"\xff\xd9"
    )


def jpeg_frames(n=8, width=160, height=120):
    """`n` distinct JPEG frames of the moving-disc picture."""
    return [jpeg(picture(width, height, 2 * math.pi * i / n)) for i in range(n)]


# ---------------------------------------------------------------------------
# Load


class Pusher(threading.Thread):
    """PushImage(wait=True) in a loop at `rate` Hz (0 = back to back) on
    its own channel, recording (finish time, latency s, status code name)."""

    def __init__(self, target, frames, rate=2.0, timeout=30.0, request_extra=None, name="pusher",
                 fresh_sources=False):
        super().__init__(name=name, daemon=True)
        self.target, self.frames, self.rate, self.timeout = target, frames, rate, timeout
        # Each push under a new source name: per-source state must stay bounded.
        self.fresh_sources = fresh_sources
        self.request_extra = dict(request_extra or {})
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.start()

    def run(self):
        import grpc

        s = stubs()
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        with channel(self.target, [("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = s.rpc.PoseServiceStub(ch)
            i = 0
            next_at = time.monotonic()
            while not self.stopping.is_set():
                extra = dict(self.request_extra)
                if self.fresh_sources:
                    extra["source_id"] = f"{self.name}-{i}"
                req = s.pb.PushImageRequest(
                    encoded=self.frames[i % len(self.frames)], wait=True, client_frame_id=i + 1, **extra
                )
                t0 = time.monotonic()
                try:
                    stub.PushImage(req, timeout=self.timeout)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name if e.code() else "UNKNOWN"
                t1 = time.monotonic()
                with self.lock:
                    self.records.append((t1, t1 - t0, code))
                i += 1
                next_at = max(next_at + period, t1) if period else t1
                self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def since(self, t):
        with self.lock:
            return [r for r in self.records if r[0] >= t]

    def stop(self):
        self.stopping.set()
        self.join(self.timeout + 5)


def latency_summary(records):
    """{n, errors: {code: n}, p50/p90/p99/max in ms} of Pusher records."""
    ok = sorted(r[1] for r in records if r[2] == "OK")
    errors = {}
    for r in records:
        if r[2] != "OK":
            errors[r[2]] = errors.get(r[2], 0) + 1

    def ms(v):
        return None if v is None else round(v * 1000, 1)

    return {
        "n": len(records),
        "errors": errors,
        "p50_ms": ms(percentile(ok, 0.5)),
        "p90_ms": ms(percentile(ok, 0.9)),
        "p99_ms": ms(percentile(ok, 0.99)),
        "max_ms": ms(ok[-1] if ok else None),
    }


class StalledStream:
    """A server-streaming call (Subscribe by default) opened over a raw
    HTTP/2 connection that is then never read: the stream's flow-control
    window (64 KiB) and the small TCP receive buffer fill and the daemon's
    writes to it stop, as with a client that hangs without exiting.

    (A grpcio call that is never iterated does not stall: grpcio keeps
    reading the socket and buffers the messages itself.) `request` is the
    serialized request message. The connection never answers the
    daemon's SETTINGS or PINGs."""

    def __init__(self, host, port, request: bytes, path="/posed.v1.PoseService/Subscribe"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))

        def frame(kind, flags, stream, payload):
            return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

        def literal(name, value):  # HPACK literal without indexing, new name, no Huffman
            out = b"\x00"
            for s in (name.encode(), value.encode()):
                if len(s) >= 127:
                    raise ValueError("header too long for this encoder")
                out += bytes([len(s)]) + s
            return out

        headers = b"".join(literal(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ))
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, 65535)  # no push; 64 KiB window
        message = b"\x00" + struct.pack(">I", len(request)) + request
        self.sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + frame(0x4, 0, 0, settings)
            + frame(0x1, 0x4, 1, headers)  # END_HEADERS
            + frame(0x0, 0x1, 1, message)  # END_STREAM
        )

    def unread(self) -> int:
        """Bytes the daemon sent that wait unread in the receive buffer."""
        import fcntl
        import termios

        buf = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]

    def close(self):
        self.sock.close()
