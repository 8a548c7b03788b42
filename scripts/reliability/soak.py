#!/usr/bin/env python3
"""Soak `posed serve`: steady pushes, a PushStream and a few subscribers for
--minutes, one JSON line every --interval seconds, then a summary line.

Each sample: elapsed seconds, frames done (PushImage replies and PushStream
results), errors by status code (cumulative), p50/p90/p99 latency over the
window for PushImage (wait=true) and for the PushStream (frame sent to its
event back), subscriber events, the daemon's RSS (MB) and open fds.

The verdict (last line, and the exit status) fails when the daemon died,
no frame was done, any request failed, or fds/RSS grew past the bounds.

    soak.py --minutes 10 [--rate 2] [--out soak.jsonl]
    soak.py --minutes 60 --target 127.0.0.1:50151 --pid 1234   # a running daemon
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


class StreamClient(threading.Thread):
    """One PushStream at `rate` Hz: frames with a client box (the fast
    path, events with a hand and its vertices); latency per frame id."""

    def __init__(self, target, frames, rate):
        super().__init__(name="push-stream", daemon=True)
        self.target, self.frames, self.rate = target, frames, rate
        self.lock = threading.Lock()
        self.sent = {}
        self.records = []  # (time, latency s, "OK" | code)
        self.skipped = 0
        self.restarts = 0
        self.stopping = threading.Event()
        self.start()

    def requests(self):
        pb = harness.stubs().pb
        box = pb.HandBox(box=pb.Box2D(x1=40, y1=30, x2=120, y2=100), side=pb.HAND_SIDE_RIGHT)
        i = 0
        period = 1.0 / self.rate
        while not self.stopping.is_set():
            i += 1
            with self.lock:
                self.sent[i] = time.monotonic()
            yield pb.PushImageRequest(
                encoded=self.frames[i % len(self.frames)], hand_boxes=[box], client_frame_id=i, include_vertices=True
            )
            self.stopping.wait(period)

    def run(self):
        import grpc

        s = harness.stubs()
        while not self.stopping.is_set():
            with harness.channel(self.target, [("grpc.use_local_subchannel_pool", 1)]) as ch:
                try:
                    for ev in s.rpc.PoseServiceStub(ch).PushStream(self.requests()):
                        now = time.monotonic()
                        kind = ev.WhichOneof("payload")
                        with self.lock:
                            t0 = self.sent.pop(ev.client_frame_id, None)
                            if kind == "skipped":
                                self.skipped += 1
                            elif kind == "error":
                                self.records.append((now, 0.0, f"event:{ev.error.code}"))
                            elif t0 is not None:
                                self.records.append((now, now - t0, "OK"))
                except grpc.RpcError as e:
                    if not self.stopping.is_set():
                        with self.lock:
                            self.records.append((time.monotonic(), 0.0, e.code().name if e.code() else "UNKNOWN"))
                            self.restarts += 1
                        time.sleep(1)

    def since(self, t):
        with self.lock:
            return [r for r in self.records if r[0] >= t]

    def stop(self):
        self.stopping.set()
        self.join(10)


class Subscribers(threading.Thread):
    """Subscribers that read everything (plain, with vertices, capped at
    1 Hz, ...), reopened if their stream ends."""

    KINDS = ({}, {"include_vertices": True}, {"max_rate_hz": 1.0}, {"smoothing": True})

    def __init__(self, target, n):
        super().__init__(name="subscribers", daemon=True)
        self.target, self.n = target, n
        self.events = 0
        self.errors = {}
        self.lock = threading.Lock()
        self.calls = []
        self.stopping = threading.Event()
        self.start()

    def one(self, req):
        import grpc

        s = harness.stubs()
        while not self.stopping.is_set():
            with harness.channel(self.target, [("grpc.use_local_subchannel_pool", 1)]) as ch:
                call = s.rpc.PoseServiceStub(ch).Subscribe(s.pb.SubscribeRequest(**req))
                with self.lock:
                    self.calls.append(call)
                try:
                    for _ in call:
                        with self.lock:
                            self.events += 1
                    code = "OK (stream ended)"
                except grpc.RpcError as e:
                    code = e.code().name if e.code() else "UNKNOWN"
                if self.stopping.is_set():
                    return
                with self.lock:
                    self.errors[f"subscribe:{code}"] = self.errors.get(f"subscribe:{code}", 0) + 1
                time.sleep(1)

    def run(self):
        threads = [
            threading.Thread(target=self.one, args=(self.KINDS[i % len(self.KINDS)],), daemon=True)
            for i in range(self.n)
        ]
        for t in threads:
            t.start()
        self.stopping.wait()

    def stop(self):
        self.stopping.set()
        with self.lock:
            for c in self.calls:
                c.cancel()


def errors_of(records):
    out = {}
    for r in records:
        if r[2] != "OK":
            out[r[2]] = out.get(r[2], 0) + 1
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="how long to soak")
    p.add_argument("--rate", type=float, default=2.0,
                   help="PushImage(wait=true) per second, through the detector (default 2)")
    p.add_argument("--stream-rate", type=float, default=5.0,
                   help="PushStream frames per second, with a client box (default 5)")
    p.add_argument("--subscribers", type=int, default=3, help="subscribers reading events (default 3)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--out", type=Path, help="also write the JSON lines here")
    p.add_argument("--target", help="soak a daemon that is already running (host:port or unix:path)")
    p.add_argument("--pid", type=int, help="its pid, for RSS and fds (with --target)")
    p.add_argument("--max-fd-growth", type=int, default=16, help="FAIL if fds end this many above the start")
    p.add_argument("--max-rss-growth-mb", type=float, default=None,
                   help="FAIL if RSS ends this many MB above the first sample after t=0 (default: report only)")
    p.add_argument("--start-timeout-s", type=float, default=120.0)
    p.add_argument("--fresh-sources", action="store_true",
                   help="every PushImage under a new source_id (per-source state must stay bounded)")
    args = p.parse_args()

    harness.stubs()
    daemon = None
    tmp = None
    if args.target:
        target, pid = args.target, args.pid
    else:
        tmp = Path(tempfile.mkdtemp(prefix="posed-soak-"))
        daemon = harness.Daemon(tmp).start()
        daemon.wait_serving(args.start_timeout_s)
        target, pid = daemon.tcp, daemon.pid

    def alive():
        return daemon.alive() if daemon else (pid is None or Path(f"/proc/{pid}").exists())

    def rss():
        return round(harness.rss_mb(pid), 1) if pid and alive() and harness.rss_mb(pid) else None

    def fds():
        return harness.fd_count(pid) if pid and alive() else None

    out = open(args.out, "w") if args.out else None

    def emit(obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    frames = harness.jpeg_frames(8)
    pusher = harness.Pusher(target, frames, rate=args.rate, fresh_sources=args.fresh_sources)
    stream = StreamClient(target, frames, args.stream_rate)
    subs = Subscribers(target, args.subscribers)
    t_start = time.monotonic()
    start_rss, start_fds = rss(), fds()
    rss_max, fds_max = start_rss or 0, start_fds or 0
    emit({"t": 0.0, "rss_mb": start_rss, "fds": start_fds, "target": target, "pid": pid})

    duration = args.minutes * 60
    last = t_start
    warm_rss = None  # after the first window: MLX's buffers are allocated by then
    all_push, all_stream = [], []
    while True:
        now = time.monotonic()
        end = t_start + duration
        wake = min(last + args.interval, end)
        if now < wake:
            time.sleep(min(0.5, wake - now))
            if alive():
                continue
        now = time.monotonic()
        w_push, w_stream = pusher.since(last), stream.since(last)
        w_push = [r for r in w_push if r[0] < now]
        w_stream = [r for r in w_stream if r[0] < now]
        all_push += w_push
        all_stream += w_stream
        r, f = rss(), fds()
        rss_max, fds_max = max(rss_max, r or 0), max(fds_max, f or 0)
        if warm_rss is None:
            warm_rss = r
        push_sum, stream_sum = harness.latency_summary(w_push), harness.latency_summary(w_stream)
        errors = errors_of(all_push)
        for k, v in errors_of(all_stream).items():
            errors[f"stream:{k}"] = v
        with subs.lock:
            errors.update(subs.errors)
            sub_events = subs.events
        emit({
            "t": round(now - t_start, 1),
            "frames": sum(1 for x in all_push + all_stream if x[2] == "OK"),
            "frames_window": {"push": push_sum["n"], "stream": stream_sum["n"]},
            "errors": errors,
            "push_ms": {k: push_sum[k] for k in ("p50_ms", "p90_ms", "p99_ms")},
            "stream_ms": {k: stream_sum[k] for k in ("p50_ms", "p90_ms", "p99_ms")},
            "stream_skipped": stream.skipped,
            "subscriber_events": sub_events,
            "rss_mb": r,
            "fds": f,
            "alive": alive(),
        })
        last = now
        if now >= end or not alive():
            break

    died = not alive()
    pusher.stop()
    stream.stop()
    subs.stop()
    time.sleep(0.5)
    end_rss, end_fds = rss(), fds()
    total_frames = sum(1 for x in all_push + all_stream if x[2] == "OK")
    errors = errors_of(all_push)
    for k, v in errors_of(all_stream).items():
        errors[f"stream:{k}"] = v
    errors.update(subs.errors)
    why = []
    if died:
        why.append("the daemon died")
    if total_frames == 0:
        why.append("no frame was done")
    if errors:
        why.append(f"errors {errors}")
    if start_fds is not None and end_fds is not None and end_fds - start_fds > args.max_fd_growth:
        why.append(f"fds grew {start_fds} -> {end_fds}")
    if args.max_rss_growth_mb is not None and warm_rss and end_rss and end_rss - warm_rss > args.max_rss_growth_mb:
        why.append(f"RSS grew {warm_rss} -> {end_rss} MB after the first window")
    push_all, stream_all = harness.latency_summary(all_push), harness.latency_summary(all_stream)
    # The daemon is idle now (clients stopped): SIGTERM to exit, timed.
    shutdown_ms = exit_code = None
    if daemon:
        t0 = time.monotonic()
        exit_code = daemon.stop()
        shutdown_ms = round((time.monotonic() - t0) * 1000, 1)
        if exit_code != 0:
            why.append(f"exit code {exit_code} after SIGTERM")
    emit({
        "summary": True,
        "seconds": round(time.monotonic() - t_start, 1),
        "frames": total_frames,
        "frames_push": push_all["n"],
        "frames_stream": stream_all["n"],
        "stream_skipped": stream.skipped,
        "subscriber_events": subs.events,
        "errors": errors,
        "push_ms": {k: push_all[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "stream_ms": {k: stream_all[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "rss_mb": {"start": start_rss, "first_window": warm_rss, "end": end_rss, "max": round(rss_max, 1)},
        "fds": {"start": start_fds, "end": end_fds, "max": fds_max},
        "shutdown_ms": shutdown_ms,
        "exit_code": exit_code,
        "verdict": "FAIL" if why else "PASS",
        "why": why,
    })
    if daemon:
        if why:
            print(f"soak: daemon log kept in {daemon.log_path}", file=sys.stderr)
        else:
            __import__("shutil").rmtree(tmp, ignore_errors=True)
    if out:
        out.close()
    print(f"soak: {'FAIL: ' + '; '.join(why) if why else 'PASS'}", flush=True)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
