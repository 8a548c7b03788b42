#!/usr/bin/env python3
"""Fault scenarios against `posed serve` (issue #23, "Build to keep it so").

Each scenario starts its own daemon on the tiny fixture weights and prints
PASS or FAIL lines with the figure it observed (INFO lines report figures
that are not judged). Exit status 1 when any line FAILs.

  a  stalled subscribers and vanishing clients: others are still served
  b  a frozen client (SIGSTOP): others are still served; is it dropped?
  c  SIGKILL mid-frame, restart on the same port and socket; a second
     daemon on a live socket must not take it over
  d  flood: 64 subscribers, 32 never read, plus pushes
  e  bad-input sweep: every request gets a status, none hangs or kills it
  f  grpcio over the Unix socket: with grpc.default_authority it works;
     without it C-core sends the socket path as :authority, which the
     HTTP/2 layer refuses (reported as INFO, documented)

    faults.py [--short] [--only a,c] [--expect-keepalive-s 10]
"""

import argparse
import math
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

RESULTS = []

# google.rpc.Code numbers, for EventError.code.
CODE_NAMES = dict(enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)))


def report(verdict, name, figure):
    """verdict: True (PASS), False (FAIL) or None (INFO)."""
    word = {True: "PASS", False: "FAIL", None: "INFO"}[verdict]
    RESULTS.append((word, name))
    print(f"{word} {name}: {figure}", flush=True)


def code_of(err):
    return err.code().name if err.code() else "UNKNOWN"


def hand_box(pb, x1=40.0, y1=30.0, x2=120.0, y2=100.0, side=None):
    return pb.HandBox(box=pb.Box2D(x1=x1, y1=y1, x2=x2, y2=y2), side=side or pb.HAND_SIDE_RIGHT)


class Ctx:
    """What every scenario shares: options, a scratch folder, frames."""

    def __init__(self, args):
        self.args = args
        self.s = harness.stubs()
        self.tmp = Path(tempfile.mkdtemp(prefix="posed-rel-"))
        self.frames = harness.jpeg_frames(4)
        self.daemons = []

    def daemon(self, name, keepalive=False, **kw):
        """A daemon, SERVING. `keepalive`: with the short keepalive of
        --keepalive-interval-s/--keepalive-timeout-s (scenario b); the others
        keep the daemon's default, so stalled clients stay for the scenario."""
        env = {}
        if keepalive:
            env = {
                "POSED_SERVER_KEEPALIVE_INTERVAL_MS": str(int(self.args.keepalive_interval_s * 1000)),
                "POSED_SERVER_KEEPALIVE_TIMEOUT_MS": str(int(self.args.keepalive_timeout_s * 1000)),
            }
        env.update(kw.pop("env", {}))
        d = harness.Daemon(self.tmp / name, env=env, **kw)
        self.daemons.append(d)
        d.start()
        d.wait_serving(self.args.start_timeout_s)
        return d

    def fast_push(self):
        """PushImage fields that skip the detector (a client box): ~15 ms a
        frame on the fixture weights, and events with a hand in them."""
        return {"hand_boxes": [hand_box(self.s.pb)]}

    def pusher(self, d, rate=None):
        return harness.Pusher(
            d.tcp, self.frames, rate=rate or self.args.rate, timeout=self.args.request_timeout_s,
            request_extra=self.fast_push(),
        )

    def subscriber(self, target, read=True, **req):
        """(channel, call, Reader or None): a Subscribe on its own connection."""
        ch = harness.channel(target, [("grpc.use_local_subchannel_pool", 1)])
        call = self.s.rpc.PoseServiceStub(ch).Subscribe(self.s.pb.SubscribeRequest(**req))
        return ch, call, (harness.Reader(call) if read else None)

    def subscribers(self, d, target=None):
        with harness.channel(target or d.tcp) as ch:
            st = self.s.rpc.PoseServiceStub(ch).GetStatus(self.s.pb.GetStatusRequest(), timeout=5)
        return st.subscribers

    def stalled(self, d, n, **req):
        """`n` Subscribe calls that are never read (raw HTTP/2, see
        harness.StalledStream)."""
        body = self.s.pb.SubscribeRequest(**req).SerializeToString()
        return [harness.StalledStream("127.0.0.1", d.port, body) for _ in range(n)]

    def fanout_dropped(self, d):
        """Events the daemon dropped for slow subscribers (telemetry)."""
        with harness.channel(d.tcp) as ch:
            t = self.s.rpc.PoseServiceStub(ch).GetTelemetry(self.s.pb.GetTelemetryRequest(), timeout=5)
        return sum(st.dropped for st in t.stages if st.name.endswith(".fanout"))

    def push_frames(self, d, target=None, opts=None):
        """Frames the daemon's "push" source counted (tells two daemons apart)."""
        with harness.channel(target or d.tcp, opts) as ch:
            st = self.s.rpc.PoseServiceStub(ch).GetStatus(self.s.pb.GetStatusRequest(), timeout=5)
        return sum(src.frames for src in st.sources if src.id == "push")

    def wait_subscribers(self, d, want, within):
        """Seconds until GetStatus reports at most `want` subscribers, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < within:
            try:
                if self.subscribers(d) <= want:
                    return time.monotonic() - t0
            except Exception:
                pass
            time.sleep(0.25)
        return None

    def served_ok(self, name, d, pusher, since, sub_reader=None, sub_before=None, extra=""):
        """The healthy client's verdict over the window from `since`."""
        w = harness.latency_summary(pusher.since(since))
        bound_ms = self.args.push_bound_s * 1000
        ok = d.alive() and w["n"] > 0 and not w["errors"] and (w["max_ms"] or 0) <= bound_ms
        fig = (
            f"healthy pushes n={w['n']} p50={w['p50_ms']} p99={w['p99_ms']} max={w['max_ms']} ms "
            f"(bound {bound_ms:.0f}), errors={w['errors'] or 0}"
        )
        if sub_reader is not None:
            got = sub_reader.count - (sub_before or 0)
            ok = ok and got > 0
            fig += f", healthy subscriber +{got} events"
        if not d.alive():
            fig += f", DAEMON DIED rc={d.proc.returncode}"
        report(ok, name, fig + extra)

    def cleanup(self):
        for d in self.daemons:
            if d.alive():
                d.stop(5)


# ---------------------------------------------------------------------------
# Child clients (vanishing, frozen): this script run with --child TARGET.


def child_main(target):
    s = harness.stubs()
    pb = s.pb
    frames = harness.jpeg_frames(2, 96, 72)
    ch = harness.channel(target)
    stub = s.rpc.PoseServiceStub(ch)
    sub = stub.Subscribe(pb.SubscribeRequest(include_vertices=True))
    sub.initial_metadata()

    def frames_out():
        i = 0
        while True:
            yield pb.PushImageRequest(
                encoded=frames[i % 2], hand_boxes=[hand_box(pb, 10, 10, 80, 60)], client_frame_id=i + 1,
                include_vertices=True,
            )
            i += 1
            time.sleep(0.1)

    stream = stub.PushStream(frames_out())
    stream.initial_metadata()
    threading.Thread(target=lambda: sum(1 for _ in stream), daemon=True).start()
    print("ready", flush=True)
    for _ in sub:
        pass


def spawn_child(target):
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", target],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )


def wait_ready(children, timeout):
    """True when every child printed "ready" within `timeout` s."""
    deadline = time.monotonic() + timeout
    pending = {c.stdout.fileno(): c for c in children}
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            line = pending[fd].stdout.readline()
            if line.strip() == b"ready" or not line:
                pending.pop(fd)
    return not pending


def reap(children):
    for c in children:
        if c.poll() is None:
            c.kill()
        c.wait()


# ---------------------------------------------------------------------------
# Scenarios


def scenario_a(ctx):
    """Stalled subscribers, then clients that vanish mid-stream."""
    a = ctx.args
    d = ctx.daemon("a")
    n_stalled = 8 if a.short else 16
    n_vanish = 4 if a.short else 16
    _, _, good = ctx.subscriber(d.tcp, include_vertices=True)
    stalled = ctx.stalled(d, n_stalled, include_vertices=True)
    # Fast pushes (~10 kB events with vertices) so the stalled streams fill
    # their HTTP/2 windows and the daemon's queues for them overflow.
    pusher = ctx.pusher(d, rate=20)
    t0 = time.monotonic()
    time.sleep(5 if a.short else 15)
    ctx.served_ok(f"a1 {n_stalled} stalled subscribers", d, pusher, t0, good, 0,
                  extra=f", {sum(x.unread() for x in stalled)} bytes wait unread at the stalled clients, "
                  f"subscribers {ctx.subscribers(d)}")
    pusher.stop()
    pusher = ctx.pusher(d)

    base_subs = ctx.subscribers(d)
    fds_before = d.fds()
    before = good.count
    t1 = time.monotonic()
    children = [spawn_child(d.tcp) for _ in range(n_vanish)]
    ready = wait_ready(children, 30)
    time.sleep(1.5)
    peak_subs = ctx.subscribers(d)
    for c in children:
        c.send_signal(signal.SIGKILL)
    reap(children)
    back = ctx.wait_subscribers(d, base_subs, 10)
    time.sleep(1)
    fds_after = d.fds()
    ctx.served_ok(
        f"a2 {n_vanish} vanishing clients (SIGKILL with Subscribe and PushStream open)", d, pusher, t1, good, before,
        extra=f", children ready={ready}, subscribers {base_subs}->{peak_subs}->"
        + (f"{base_subs} after {back:.1f} s" if back is not None else f"{ctx.subscribers(d)} (not back in 10 s)")
        + f", fds {fds_before}->{fds_after}",
    )
    report(
        back is not None and fds_after is not None and fds_after <= fds_before + 2,
        "a3 vanished clients released",
        f"subscribers back to {base_subs}: {'yes' if back is not None else 'no'}; fds before {fds_before}, after {fds_after}",
    )
    pusher.stop()
    good.cancel()
    for x in stalled:
        x.close()
    d.stop()


def scenario_b(ctx):
    """A client frozen with SIGSTOP while its streams are open."""
    a = ctx.args
    d = ctx.daemon("b", keepalive=True)
    pusher = ctx.pusher(d)
    _, _, good = ctx.subscriber(d.tcp, include_vertices=True)
    time.sleep(1)
    base_subs = ctx.subscribers(d)
    child = spawn_child(d.tcp)
    ready = wait_ready([child], 30)
    time.sleep(1)
    frozen_subs = ctx.subscribers(d)
    fds_frozen = d.fds()
    before = good.count
    child.send_signal(signal.SIGSTOP)
    t_stop = time.monotonic()
    wait_s = a.frozen_wait_s
    if wait_s is None:
        wait_s = 2 * (a.keepalive_interval_s + a.keepalive_timeout_s) + 4
        if a.expect_keepalive_s:
            wait_s = max(wait_s, a.expect_keepalive_s + 2)
    dropped = ctx.wait_subscribers(d, base_subs, wait_s)
    fds_now = d.fds()
    ctx.served_ok(
        "b1 frozen client (SIGSTOP), others served", d, pusher, t_stop, good, before,
        extra=f", child ready={ready}",
    )
    fig = (
        f"subscribers {base_subs}+1 frozen={frozen_subs}; "
        + (f"frozen stream dropped after {dropped + 0.0:.1f} s" if dropped is not None
           else f"frozen stream NOT dropped within {wait_s:.0f} s")
        + f"; daemon fds {fds_frozen}->{fds_now}"
        + f" (keepalive asked: interval {a.keepalive_interval_s} s, timeout {a.keepalive_timeout_s} s)"
    )
    if a.expect_keepalive_s:
        report(dropped is not None and dropped <= a.expect_keepalive_s,
               f"b2 frozen client dropped within {a.expect_keepalive_s} s", fig)
    else:
        report(None, "b2 frozen client dropped", fig)
    reap([child])  # SIGKILL ends a stopped process too
    pusher.stop()
    good.cancel()
    d.stop()


def scenario_c(ctx):
    """SIGKILL mid-frame and restart on the same port and socket path."""
    a = ctx.args
    s = ctx.s
    sock = ctx.tmp / "c.sock"
    port = harness.free_port()
    uds_opts = [("grpc.default_authority", "localhost")]  # isolates this from item 7 (scenario f)
    rounds = 2 if a.short else 5
    d = ctx.daemon("c", port=port, socket_path=sock)
    for r in range(1, rounds + 1):
        # In flight at the kill: a push through the detector (~0.3 s on the
        # fixture weights), a subscriber and a PushStream.
        ch = harness.channel(d.tcp, [("grpc.use_local_subchannel_pool", 1)])
        stub = s.rpc.PoseServiceStub(ch)
        sub = harness.Reader(stub.Subscribe(s.pb.SubscribeRequest()))
        stream = harness.Reader(stub.PushStream(iter([s.pb.PushImageRequest(encoded=ctx.frames[1])] * 3)))
        fut = stub.PushImage.future(s.pb.PushImageRequest(encoded=ctx.frames[0], wait=True), timeout=30)
        time.sleep(0.12)
        in_flight = not fut.done()
        d.kill()
        try:
            fut.result()
            push_code = "OK"
        except Exception as e:  # grpc.RpcError
            push_code = code_of(e)
        sub.join(10)
        stream.join(10)
        stale = sock.exists()
        lock = Path(str(sock) + ".lock").exists()
        ch.close()

        t0 = time.monotonic()
        d.restart()
        try:
            d.wait_serving(a.start_timeout_s)
            restarted = f"serving on TCP after {time.monotonic() - t0:.1f} s"
            ok = True
        except Exception as e:
            restarted = f"did not serve: {str(e).splitlines()[0]}; log: {d.log_tail(3)!r}"
            ok = False
        uds = "-"
        if ok:
            try:
                with harness.channel(d.uds, uds_opts) as uch:
                    reply = s.rpc.PoseServiceStub(uch).PushImage(
                        s.pb.PushImageRequest(encoded=ctx.frames[2], wait=True, **ctx.fast_push()), timeout=30
                    )
                uds = f"push over unix OK ({len(reply.events)} event)"
            except Exception as e:
                uds = f"push over unix {code_of(e)}"
                ok = False
        report(
            ok,
            f"c1 SIGKILL mid-frame #{r}, restart on the same port and socket",
            f"push in flight at kill={in_flight} -> {push_code}; subscriber ended {sub.ended}, "
            f"PushStream ended {stream.ended}; stale socket file left={stale}, lock file left={lock}; "
            f"restart {restarted}; {uds}",
        )
        if not ok:
            return

    # A second daemon on the same socket path while the first serves it.
    second = harness.Daemon(ctx.tmp / "c-second", socket_path=sock)
    ctx.daemons.append(second)
    second.start()
    t0 = time.monotonic()
    while second.alive() and time.monotonic() - t0 < 10:
        try:
            second.wait_serving(0.5)
            break
        except Exception:
            pass
    second_state = "still running" if second.alive() else f"exited rc={second.proc.returncode}"
    try:
        # The first daemon has counted pushes; a fresh second one has not.
        first_pid_answers = "first answers" if ctx.push_frames(d, d.uds, uds_opts) > 0 else "SECOND answers"
    except Exception as e:
        first_pid_answers = code_of(e)
    second_alive = second.alive()
    second.stop(5)
    try:
        after = "first answers" if ctx.push_frames(d, d.uds, uds_opts) > 0 else "SECOND answers"
    except Exception as e:
        after = code_of(e)
    report(
        not second_alive and second.proc.returncode != 0 and first_pid_answers == after == "first answers",
        "c2 second daemon on a live socket refuses",
        f"second daemon {second_state}; unix socket while both ran: {first_pid_answers}; "
        f"after the second stopped: {after}; second's log: {second.log_tail(2)!r}",
    )
    d.stop()


def scenario_d(ctx):
    """Flood: 64 subscribers, 32 of them never read, plus pushes."""
    a = ctx.args
    s = ctx.s
    d = ctx.daemon("d")
    rss0, fds0 = d.rss_mb(), d.fds()
    readers = [ctx.subscriber(d.tcp, include_vertices=True) for _ in range(32)]
    stalled = ctx.stalled(d, 32, include_vertices=True)
    pusher = ctx.pusher(d, rate=10)
    t0 = time.monotonic()
    duration = 15 if a.short else 60
    rss_max, fds_max = rss0, fds0
    rpc_max = 0.0
    rpc_errors = {}
    subs_seen = None
    with harness.channel(d.tcp, [("grpc.use_local_subchannel_pool", 1)]) as ch:
        stub = s.rpc.PoseServiceStub(ch)
        while time.monotonic() - t0 < duration:
            for call, req in (
                (stub.GetStatus, s.pb.GetStatusRequest()),
                (stub.GetTelemetry, s.pb.GetTelemetryRequest(include_histograms=True)),
            ):
                q0 = time.monotonic()
                try:
                    reply = call(req, timeout=5)
                    if hasattr(reply, "subscribers"):
                        subs_seen = reply.subscribers
                except Exception as e:
                    rpc_errors[code_of(e)] = rpc_errors.get(code_of(e), 0) + 1
                rpc_max = max(rpc_max, time.monotonic() - q0)
            rss_max = max(rss_max, d.rss_mb() or 0)
            fds_max = max(fds_max, d.fds() or 0)
            time.sleep(1)
    counts = sorted(r.count for _, _, r in readers)
    dropped = sum(r.last.dropped_for_subscriber for _, _, r in readers if r.last is not None)
    rss_end = d.rss_mb()
    ctx.served_ok(
        "d1 flood: 32 readers + 32 stalled subscribers", d, pusher, t0,
        extra=f", subscribers seen {subs_seen}, {sum(x.unread() for x in stalled)} bytes wait unread at the stalled",
    )
    report(
        counts[0] > 0,
        "d2 flood: every reader gets events",
        f"events per reader min {counts[0]} median {counts[len(counts) // 2]} max {counts[-1]}, "
        f"last dropped_for_subscriber sum {dropped}",
    )
    report(
        not rpc_errors and rpc_max <= 5,
        "d3 flood: GetStatus/GetTelemetry answer",
        f"slowest {rpc_max * 1000:.0f} ms, errors {rpc_errors or 0}",
    )
    growth = (rss_max or 0) - (rss0 or 0)
    report(
        d.alive() and growth <= a.rss_bound_mb,
        "d4 flood: RSS bounded",
        f"RSS {rss0:.0f} MB at start, max {rss_max:.0f} MB (+{growth:.0f}, bound +{a.rss_bound_mb:.0f}), "
        f"{(rss_end or 0):.0f} MB at end; fds {fds0} -> max {fds_max}",
    )
    pusher.stop()
    for ch, call, _ in readers:
        call.cancel()
        ch.close()
    for x in stalled:
        x.close()
    back = ctx.wait_subscribers(d, 0, 10)
    time.sleep(0.5)
    report(
        back is not None,
        "d5 flood: subscribers released",
        f"0 subscribers after {back:.1f} s; fds {d.fds()} (start {fds0})" if back is not None
        else f"{ctx.subscribers(d)} subscribers 10 s after the clients left",
    )
    d.stop()


# Bad input --------------------------------------------------------------------

FLOATS = (("nan", math.nan), ("+inf", math.inf), ("-inf", -math.inf), ("0", 0.0), ("-1", -1.0), ("huge", 3.0e38))


def png_with_size(w, h):
    """A PNG whose header claims w x h but whose data is one tiny row."""
    real = harness.png([[(1, 2, 3)]])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", __import__("zlib").crc32(b"IHDR" + ihdr))
    return real[:8] + chunk + real[8 + 25:]


def jpeg_with_size(jpg, w, h):
    """`jpg` with its frame header (SOF0) claiming w x h."""
    i = jpg.index(b"\xff\xc0")
    return jpg[:i + 5] + struct.pack(">HH", h, w) + jpg[i + 9:]


def bad_input_cases(ctx):
    """(class, case, kind, request): kind "push", "subscribe", "stream" or
    "raw" (a method path and raw request bytes)."""
    pb = ctx.s.pb
    jpg, box = ctx.frames[0], hand_box(pb)
    png = harness.png(harness.picture(64, 48))
    cases = []

    def push(cls, name, **fields):
        fields.setdefault("wait", True)
        if "raw_rgb" not in fields and "encoded" not in fields and fields.pop("no_image", False) is False:
            fields["encoded"] = jpg
        cases.append((cls, name, "push", pb.PushImageRequest(**fields)))

    for f in ("fx", "fy", "cx", "cy"):
        for label, v in FLOATS:
            base = dict(fx=500.0, fy=500.0, cx=80.0, cy=60.0)
            base[f] = v
            push("intrinsics", f"{f}={label}", intrinsics=pb.CameraIntrinsics(**base), hand_boxes=[box])
    for f in ("conf_threshold", "iou_threshold", "min_tracking_confidence"):
        for label, v in FLOATS:
            push("hand_options", f"{f}={label}", hand_options=pb.HandOptions(**{f: v}))
    for f in ("redetect_interval", "max_hands"):
        for v in (0, 2**32 - 1):
            push("hand_options", f"{f}={v}", hand_options=pb.HandOptions(**{f: v}))
    for f in ("x1", "y1", "x2", "y2"):
        for label, v in FLOATS:
            coords = dict(x1=40.0, y1=30.0, x2=120.0, y2=100.0)
            coords[f] = v
            push("hand_boxes", f"{f}={label}", hand_boxes=[pb.HandBox(box=pb.Box2D(**coords), side=pb.HAND_SIDE_LEFT)])
    push("hand_boxes", "inverted box", hand_boxes=[hand_box(pb, 120, 100, 40, 30)])
    push("hand_boxes", "zero-area box", hand_boxes=[hand_box(pb, 50, 50, 50, 50)])
    push("hand_boxes", "box outside the image", hand_boxes=[hand_box(pb, 5000, 5000, 6000, 6000)])
    push("hand_boxes", "side=99", hand_boxes=[pb.HandBox(box=box.box, side=99)])
    push("hand_boxes", "1000 boxes", hand_boxes=[box] * 1000)
    push("person_boxes", "nan box (body route off)", person_boxes=[pb.Box2D(x1=math.nan, y1=0, x2=10, y2=10)])
    push("ids", "client_frame_id=2^64-1", client_frame_id=2**64 - 1, hand_boxes=[box])
    for v in (-1, -(2**63), 2**63 - 1):
        push("ids", f"capture_unix_ns={v}", capture_unix_ns=v, hand_boxes=[box])
    push("ids", "source_id 64 KiB", source_id="s" * 65536, hand_boxes=[box])
    push("ids", "source_id with NUL", source_id="a\x00b", hand_boxes=[box])
    for label, routes in (("[99]", [99]), ("[-1]", [-1]), ("[UNSPECIFIED]", [0]), ("[BODY] (off)", [2]),
                          ("[MATTE] (off)", [3]), ("[HANDS, HANDS]", [1, 1]), ("[HANDS] x1000", [1] * 1000)):
        push("routes", label, routes=routes, hand_boxes=[box])
    push("image", "no image", no_image=True)
    push("image", "empty bytes", encoded=b"")
    push("image", "garbage 4 KiB", encoded=os.urandom(4096))
    push("image", "JPEG first half", encoded=jpg[: len(jpg) // 2])
    push("image", "JPEG header only", encoded=jpg[:200])
    push("image", "JPEG SOI only", encoded=jpg[:2])
    push("image", "JPEG without EOI", encoded=jpg[:-2])
    mid = len(jpg) // 2
    push("image", "JPEG corrupt scan", encoded=jpg[:mid] + os.urandom(256) + jpg[mid + 256:])
    push("image", "PNG first half", encoded=png[: len(png) // 2])
    push("image", "PNG signature only", encoded=png[:8])
    push("image", "PNG bad CRC", encoded=png[:29] + b"\0\0\0\0" + png[33:])
    push("huge", "PNG header 100000x100000", encoded=png_with_size(100000, 100000))
    push("huge", "PNG header 4096x4096 (in limits), data 1 px", encoded=png_with_size(4096, 4096))
    push("huge", "JPEG SOF 65500x65500", encoded=jpeg_with_size(jpg, 65500, 65500))
    push("huge", "JPEG SOF 4000x3000 (in limits), data 160x120", encoded=jpeg_with_size(jpg, 4000, 3000))
    push("huge", "JPEG SOF 0x0", encoded=jpeg_with_size(jpg, 0, 0))
    raw = pb.RawImage
    push("raw", "0x0", raw_rgb=raw(width=0, height=0, data=b""))
    push("raw", "64x48, short data", raw_rgb=raw(width=64, height=48, data=b"\0" * 100))
    push("raw", "64x48, long data", raw_rgb=raw(width=64, height=48, data=b"\0" * (64 * 48 * 3 + 7)))
    push("raw", "65535x65535, no data", raw_rgb=raw(width=65535, height=65535, data=b""))
    push("raw", "2^32-1 x 2^32-1", raw_rgb=raw(width=2**32 - 1, height=2**32 - 1, data=b"\0" * 12))
    push("raw", "1x1", raw_rgb=raw(width=1, height=1, data=b"\x80\x80\x80"))
    push("raw", "1024x1 (elongated)", raw_rgb=raw(width=1024, height=1, data=b"\x80" * 3072))
    push("matte_hint", "garbage (matte off)", matte_hint=os.urandom(64), hand_boxes=[box])
    if not ctx.args.short:
        # Past the largest message (4 B/pixel at max_image_pixels + 1 MiB).
        push("huge", "70 MiB message", encoded=b"\xff" * (70 << 20))
        push("raw", "4200x4200 raw (over max_image_pixels)",
             raw_rgb=raw(width=4200, height=4200, data=b"\x80" * (4200 * 4200 * 3)))

    for label, v in FLOATS + (("1e-30", 1e-30), ("denormal", 1e-45)):
        cases.append(("subscribe", f"max_rate_hz={label}", "subscribe", pb.SubscribeRequest(max_rate_hz=v)))
    cases.append(("subscribe", "routes=[99]", "subscribe", pb.SubscribeRequest(routes=[99])))
    cases.append(("subscribe", "routes=[BODY] (off)", "subscribe", pb.SubscribeRequest(routes=[2])))
    cases.append(("subscribe", "source_ids 1000 x 1 KiB", "subscribe",
                  pb.SubscribeRequest(source_ids=["x" * 1024] * 1000)))

    cases.append(("push_stream", "garbage frame then a good one", "stream",
                  [pb.PushImageRequest(encoded=os.urandom(512)), pb.PushImageRequest(encoded=jpg, hand_boxes=[box])]))
    cases.append(("push_stream", "nan intrinsics", "stream",
                  [pb.PushImageRequest(encoded=jpg, intrinsics=pb.CameraIntrinsics(fx=math.nan, fy=1, cx=1, cy=1))]))
    cases.append(("push_stream", "routes=[99]", "stream", [pb.PushImageRequest(encoded=jpg, routes=[99])]))

    cases.append(("grpc", "unknown method", "raw", ("/posed.v1.PoseService/NoSuchMethod", b"")))
    cases.append(("grpc", "unknown service", "raw", ("/no.such.v1.Service/Call", b"")))
    cases.append(("grpc", "PushImage with garbage protobuf", "raw", ("/posed.v1.PoseService/PushImage", b"\xff" * 64)))
    cases.append(("grpc", "GetStatus with garbage protobuf", "raw", ("/posed.v1.PoseService/GetStatus", b"\x0a\xff\xff")))
    return cases


def run_case(ctx, stub, ch, kind, req, timeout):
    """(outcome, detail): a status code name, or for streams what came
    back; the status message."""
    import grpc

    pb = ctx.s.pb
    try:
        if kind == "push":
            reply = stub.PushImage(req, timeout=timeout)
            errs = [CODE_NAMES.get(e.error.code, e.error.code) for e in reply.events
                    if e.WhichOneof("payload") == "error"]
            return "OK" + (f" (error events {errs})" if errs else ""), ""
        if kind == "subscribe":
            call = stub.Subscribe(req, timeout=timeout)
            t0 = time.monotonic()
            while not call.done() and time.monotonic() - t0 < 1.5:
                time.sleep(0.05)
            if call.done():
                return call.code().name, call.details() or ""
            call.cancel()
            return "OK (stream open)", ""
        if kind == "stream":
            events, details = [], []
            for ev in stub.PushStream(iter(req), timeout=timeout):
                p = ev.WhichOneof("payload")
                events.append(f"error {CODE_NAMES.get(ev.error.code, ev.error.code)}" if p == "error" else p)
                if p == "error":
                    details.append(ev.error.message)
                if len(events) >= len(req):
                    break
            return "events: " + ", ".join(events), "; ".join(details)
        if kind == "raw":
            path, body = req
            ch.unary_unary(path)(body, timeout=timeout)
            return "OK", ""
    except grpc.RpcError as e:
        return code_of(e), e.details() or ""
    raise ValueError(kind)


def scenario_e(ctx):
    """Bad-input sweep: FAIL only if the daemon dies or a request hangs."""
    a = ctx.args
    d = ctx.daemon("e")
    timeout = a.request_timeout_s
    rows = []
    deaths = []
    hangs = []
    ch = harness.channel(d.tcp)
    stub = ctx.s.rpc.PoseServiceStub(ch)
    for cls, name, kind, req in bad_input_cases(ctx):
        t0 = time.monotonic()
        outcome, detail = run_case(ctx, stub, ch, kind, req, timeout)
        ms = (time.monotonic() - t0) * 1000
        if outcome == "DEADLINE_EXCEEDED" and ms >= timeout * 950:
            hangs.append(f"{cls}/{name}")
            outcome += " (HANG)"
        if not d.alive():
            deaths.append(f"{cls}/{name} (rc={d.proc.returncode})")
            outcome += " (DAEMON DIED)"
            ch.close()
            d.restart()
            d.wait_serving(a.start_timeout_s)
            ch = harness.channel(d.tcp)
            stub = ctx.s.rpc.PoseServiceStub(ch)
        rows.append((cls, name, outcome, ms, detail))
    ch.close()

    width = max(len(f"{c} / {n}") for c, n, *_ in rows)
    print(f"  {'case'.ljust(width)}  {'ms':>6}  outcome")
    for cls, name, outcome, ms, detail in rows:
        detail = detail.replace("\n", " ")
        detail = f"  [{detail[:90]}{'...' if len(detail) > 90 else ''}]" if detail else ""
        print(f"  {(cls + ' / ' + name).ljust(width)}  {ms:6.0f}  {outcome}{detail}")
    by_class = {}
    for cls, _, outcome, *_ in rows:
        by_class.setdefault(cls, {}).setdefault(outcome, 0)
        by_class[cls][outcome] += 1
    print("  class -> outcomes:")
    for cls, outcomes in by_class.items():
        print(f"    {cls}: " + "; ".join(f"{o} x{n}" for o, n in outcomes.items()))
    report(
        not deaths and not hangs,
        f"e bad-input sweep ({len(rows)} requests)",
        f"daemon deaths {deaths or 0}, hangs past {timeout:.0f} s {hangs or 0}, "
        f"slowest {max(r[3] for r in rows):.0f} ms",
    )
    d.stop()


def scenario_f(ctx):
    """grpcio over the Unix socket (item 7). gRPC C-core sends the
    percent-encoded socket path as :authority ("tmp%2Ff.sock"); the HTTP/2
    layer under tonic (h2) refuses a '%' in a host with RST_STREAM before
    the daemon sees the call. The documented option fixes it."""
    s = ctx.s
    d = ctx.daemon("f", socket_path=ctx.tmp / "f.sock")
    outcomes = {}
    for label, opts in (("no option", []), ("default_authority=localhost", [("grpc.default_authority", "localhost")])):
        for rpc in ("GetStatus", "Health.Check", "PushImage"):
            try:
                with harness.channel(d.uds, opts) as ch:
                    if rpc == "GetStatus":
                        s.rpc.PoseServiceStub(ch).GetStatus(s.pb.GetStatusRequest(), timeout=5)
                    elif rpc == "Health.Check":
                        r = s.health_rpc.HealthStub(ch).Check(
                            s.health_pb.HealthCheckRequest(service=harness.SERVICE), timeout=5)
                        if r.status != s.health_pb.HealthCheckResponse.SERVING:
                            raise RuntimeError(f"status {r.status}")
                    else:
                        s.rpc.PoseServiceStub(ch).PushImage(
                            s.pb.PushImageRequest(encoded=ctx.frames[0], wait=True, **ctx.fast_push()), timeout=30)
                outcomes[(label, rpc)] = "OK"
            except Exception as e:
                outcomes[(label, rpc)] = code_of(e) if hasattr(e, "code") else str(e)
    plain = {rpc: outcomes[("no option", rpc)] for rpc in ("GetStatus", "Health.Check", "PushImage")}
    workaround = {rpc: outcomes[("default_authority=localhost", rpc)] for rpc in plain}
    report(
        all(v == "OK" for v in workaround.values()),
        "f grpcio over unix with grpc.default_authority=localhost",
        f"{workaround}",
    )
    report(None, "f grpcio over unix without the option (documented)", f"{plain}")
    d.stop()


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e, "f": scenario_f}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the CI version: fewer clients, shorter waits")
    p.add_argument("--only", default="abcdef", help="scenarios to run, e.g. 'a,c' (default all)")
    p.add_argument("--rate", type=float, default=5.0, help="the healthy client's pushes per second")
    p.add_argument("--push-bound-s", type=float, default=5.0,
                   help="a healthy client's push must be answered within this (s)")
    p.add_argument("--request-timeout-s", type=float, default=30.0, help="a request past this hangs (s)")
    p.add_argument("--start-timeout-s", type=float, default=120.0, help="daemon start to SERVING (s)")
    p.add_argument("--keepalive-interval-s", type=float, default=1.0,
                   help="server.keepalive_interval_ms asked of scenario b's daemon (s)")
    p.add_argument("--keepalive-timeout-s", type=float, default=1.0,
                   help="server.keepalive_timeout_ms asked of scenario b's daemon (s)")
    p.add_argument("--frozen-wait-s", type=float, default=None,
                   help="how long to watch for the frozen client's stream to be dropped "
                        "(default 2 x (interval + timeout) + 4)")
    p.add_argument("--expect-keepalive-s", type=float, default=None,
                   help="FAIL unless the frozen client is dropped within this (s); without it, only reported")
    p.add_argument("--rss-bound-mb", type=float, default=300.0, help="allowed RSS growth during the flood (MB)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (daemon logs)")
    p.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_main(args.child)
        return 0

    ctx = Ctx(args)
    print(f"faults: daemon {harness.posed_binary()}, scratch {ctx.tmp}", flush=True)
    t_all = time.monotonic()
    try:
        for key in [k for k in args.only.replace(",", "") if k in SCENARIOS]:
            t0 = time.monotonic()
            print(f"--- {key}: {SCENARIOS[key].__doc__.strip().splitlines()[0]}", flush=True)
            try:
                SCENARIOS[key](ctx)
            except Exception as e:  # a scenario that could not finish fails
                report(False, f"{key} scenario error", f"{type(e).__name__}: {e}")
            finally:
                for d in ctx.daemons:
                    if d.alive():
                        d.stop(5)
            print(f"    ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        ctx.cleanup()
        if not args.keep and not any(w == "FAIL" for w, _ in RESULTS):
            __import__("shutil").rmtree(ctx.tmp, ignore_errors=True)
        else:
            print(f"faults: logs kept in {ctx.tmp}")
    counts = {w: sum(1 for r, _ in RESULTS if r == w) for w in ("PASS", "FAIL", "INFO")}
    print(f"faults: PASS {counts['PASS']}, FAIL {counts['FAIL']}, INFO {counts['INFO']} "
          f"in {time.monotonic() - t_all:.0f} s", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
