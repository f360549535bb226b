#!/usr/bin/env python3
"""Bounded load generator for OpenAI-compatible servers on loopback (moerun serve, llama-server).

    python3 tools/bench/load_serve.py --url http://127.0.0.1:8080 --concurrency 1,2,4,8,16 \\
        --requests 32 --max-tokens 64 --time-limit 120 [--api-key K] [--pid PID] [--json out.json]
    python3 tools/bench/load_serve.py --compare --moerun build/moerun --model models/default \\
        --llama-server bench-models/llamacpp/build/bin/llama-server --gguf bench-models/default/bf16.gguf \\
        --parallel 8 --threads 2 --ctx 2048 --concurrency 1,2,4,8 --requests 16 --max-tokens 64

For each concurrency level C, --requests requests (at least C) are sent by C worker threads, each
request a streamed POST /v1/chat/completions (temperature 0, max_tokens N, stream_options
include_usage) with its own prompt from a fixed list, shuffled by --seed so runs are reproducible
and both servers of --compare get the same sequence, each tagged so no prompt repeats in a run
(--repeat-prompts: untagged). A level stops starting requests after
--time-limit seconds; every request is bounded by --request-timeout. Reported per level:
  req/s      requests that succeeded / wall time of the level (first start to last finish)
  gen t/s    generated tokens of the successful requests / the same wall time. Tokens come from
             the final usage chunk (completion_tokens); without one, the content chunks are counted
             (then marked "~"). There is no portable ignore_eos, so a request may stop early at EOS:
             tok/req shows the mean actually generated (compare it between servers).
  TTFT       request start to the first chunk with non-empty content or reasoning_content
  ITL        gaps between consecutive such chunks, pooled over the level's requests
  errors     HTTP status != 200, error events, malformed or unterminated streams, timeouts
  sent < planned: the level hit --time-limit (its rates still count only what finished).
  RSS        VmRSS of --pid (or the started server) at the start and end of the level (MiB);
             mmap'd weights count once touched, so compare it between engines with care.
  other CPU  CPU time that processes other than the server and this script used during the level,
             in % of all CPUs (from /proc; needs --pid or --compare). The servers usually get
             every core, so anything above a few % means the level measured the neighbours too.

--compare starts each server itself, one after the other, on a loopback port (moerun with
--port 0, read from its "listening on" line; llama-server on a free port picked here), waits for
GET /health 200, runs one untimed warm-up request and then the same levels, stops the server,
and prints both tables and a side-by-side one with ratio = moerun / llama (> 1 is better for
rates, < 1 is better for latencies). --passes P repeats that P times, alternating which engine
goes first, and reports per level the pass with the best gen t/s (on a shared machine the slow
outliers are other load). Both run with their defaults otherwise: llama-server keeps its prompt
cache (the chat template's system prompt is a shared prefix it reuses; --llama-args
"--no-cache-prompt" turns that off) and its flash-attention "auto". The bf16 GGUF is made by
compare_llamacpp.py's prepare step when missing (from models/default, whatever --model says).
The servers' logs go to --work/serve-logs/.

Only the standard library is used (http.client + threads), so this runs wherever python3 does.
Only loopback URLs are accepted: this is a benchmark, not a tool to load other machines.
"""

import argparse
import http.client
import itertools
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Short, varied chat prompts. 32 so that the default --requests 32 sends 32 different prompts
# (a server with prompt caching gains nothing from repeats); beyond that the list cycles.
PROMPTS = [
    "Write a short story about a robot.",
    "Explain photosynthesis.",
    "What are the main causes of the French Revolution?",
    "Give me three tips for learning a new language.",
    "Describe how a bicycle works.",
    "Write a haiku about the ocean.",
    "What is the difference between a virus and a bacterium?",
    "Explain recursion to a ten-year-old.",
    "List five healthy breakfast ideas.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
    "How do airplanes stay in the air?",
    "Write a limerick about a cat who loves cheese.",
    "What are the benefits of regular exercise?",
    "Explain what a black hole is.",
    "Describe a day in the life of a medieval farmer.",
    "How does a computer store information?",
    "Give advice to someone starting their first job.",
    "What is the water cycle?",
    "Write a short poem about autumn leaves.",
    "Explain the rules of chess briefly.",
    "Why do we have seasons on Earth?",
    "Describe the taste of a lemon to someone who has never had one.",
    "What makes a good friend?",
    "How do vaccines work?",
    "Write a dialogue between a teacher and a curious student.",
    "Explain how rain forms.",
    "What are some ways to reduce stress?",
    "Describe the city of Paris in a few sentences.",
    "How do bees make honey?",
    "Write a short letter thanking a neighbour for their help.",
    "What is gravity?",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_url(url):
    """(host, port) of a loopback http URL; anything else is refused."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        sys.exit(f"load_serve: only http:// URLs (got {url!r})")
    if u.hostname not in LOOPBACK:
        sys.exit(f"load_serve: refusing {u.hostname!r}: only 127.0.0.1, localhost or ::1")
    return u.hostname, u.port or 80


def percentile(xs, q):
    """Linearly interpolated percentile (numpy's default), None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_seconds(pid):
    """(busy CPU seconds of the whole machine, of process `pid` with all its threads, of this
    script). Their differences over a level give the CPU that *other* processes took meanwhile:
    the servers here get as many threads as the machine has cores, so any other job slows them,
    and that column says which numbers to distrust."""
    hz = os.sysconf("SC_CLK_TCK")
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        machine = (sum(f[:8]) - f[3] - f[4]) / hz  # user..steal without idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    server = 0.0
    if pid:
        try:
            st = Path(f"/proc/{pid}/stat").read_text()
            fields = st[st.rindex(")") + 2:].split()
            server = (int(fields[11]) + int(fields[12])) / hz  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
    t = os.times()
    return machine, server, t.user + t.system


def read_rss(pid):
    """(VmRSS, RssAnon) of a process in MiB, or None when it cannot be read (gone, other user)."""
    if not pid:
        return None
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                fields[k] = int(v.split()[0]) / 1024
        return fields.get("VmRSS"), fields.get("RssAnon")
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# HTTP

class Client:
    def __init__(self, url, api_key=None, timeout=120.0):
        self.host, self.port = parse_url(url)
        self.api_key = api_key
        self.timeout = timeout

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(extra or {})
        return h

    def conn(self, timeout=None):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    def get(self, path, timeout=5.0):
        """(status, body bytes); status 0 with the exception text when no answer came."""
        c = self.conn(timeout)
        try:
            c.request("GET", path, headers=self.headers())
            r = c.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            return 0, str(e).encode()
        finally:
            c.close()

    def model_id(self):
        """The first id of GET /v1/models (moerun checks nothing, llama-server neither, but echo it)."""
        st, body = self.get("/v1/models")
        try:
            return json.loads(body)["data"][0]["id"] if st == 200 else "default"
        except (ValueError, KeyError, IndexError, TypeError):
            return "default"

    def stream_chat(self, model, prompt, max_tokens):
        """One streamed chat completion, timed. Returns a dict (see the keys below); never raises."""
        body = json.dumps({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": max_tokens,
        })
        res = {"ok": False, "error": None, "ttft": None, "itl": [], "total": None, "tokens": 0,
               "chunks": 0, "usage": False, "finish": None, "text_len": 0}
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        c = self.conn()
        try:
            c.request("POST", "/v1/chat/completions", body=body, headers=self.headers())
            r = c.getresponse()
            if r.status != 200:
                res["error"] = f"HTTP {r.status}: {r.read(500).decode('utf-8', 'replace').strip()}"
                return res
            last = None
            done = False
            # SSE: "data: <json>" lines, events separated by blank lines; ":" comments and other
            # fields (event:, id:) are ignored. The socket timeout bounds each read, the deadline
            # the whole request (a server that trickles bytes forever is a timeout too).
            while True:
                line = r.readline()
                if not line:
                    break
                if time.perf_counter() > deadline:
                    res["error"] = f"timeout after {self.timeout:.0f}s"
                    return res
                line = line.rstrip(b"\r\n")
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    ev = json.loads(data)
                except ValueError:
                    res["error"] = f"malformed event: {data[:200]!r}"
                    return res
                if not isinstance(ev, dict):
                    res["error"] = f"malformed event: {data[:200]!r}"
                    return res
                if "error" in ev:
                    res["error"] = f"error event: {json.dumps(ev['error'])[:300]}"
                    return res
                if isinstance(ev.get("usage"), dict) and ev["usage"].get("completion_tokens") is not None:
                    res["tokens"] = int(ev["usage"]["completion_tokens"])
                    res["usage"] = True
                for ch in ev.get("choices") or []:
                    delta = ch.get("delta") or {}
                    piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                    if piece:
                        now = time.perf_counter()
                        if last is None:
                            res["ttft"] = now - t0
                        else:
                            res["itl"].append(now - last)
                        last = now
                        res["chunks"] += 1
                        res["text_len"] += len(piece)
                    if ch.get("finish_reason"):
                        res["finish"] = ch["finish_reason"]
            if not done:
                res["error"] = "stream ended without data: [DONE]"
                return res
            if not res["usage"]:
                res["tokens"] = res["chunks"]
            res["ok"] = True
            return res
        except socket.timeout:
            res["error"] = f"timeout (no bytes for {self.timeout:.0f}s)"
            return res
        except (OSError, http.client.HTTPException) as e:
            res["error"] = f"{type(e).__name__}: {e}"
            return res
        finally:
            res["total"] = time.perf_counter() - t0
            c.close()


# ----------------------------------------------------------------------------------------------
# load levels

# Levels run so far by this process: part of every request's tag, so no two requests of a run
# (levels, passes, both engines) send the same text.
LEVELS_RUN = itertools.count()


def prompt_order(seed, n, unique=True):
    """The prompts of requests 0..n-1: the list shuffled once by the seed, then cycled. unique: each
    starts with its own tag ("[3.17] ..."), so a server can reuse only the prefix every chat shares
    (the template's system prompt and role header), not a whole prompt it saw earlier in the run
    (llama-server keeps earlier prompts' KV in RAM; moerun reuses a slot's cache): real traffic
    rarely repeats, and a benchmark that does measures the cache instead of the engine."""
    p = list(PROMPTS)
    random.Random(seed).shuffle(p)
    level = next(LEVELS_RUN)
    return [(f"[{level}.{i}] " if unique else "") + p[i % len(p)] for i in range(n)]


def run_level(client, model, conc, n_requests, max_tokens, time_limit, seed, pid, unique=True):
    n = max(n_requests, conc)
    prompts = prompt_order(seed, n, unique)
    results = [None] * n
    next_i = [0]
    lock = threading.Lock()
    rss0 = read_rss(pid)
    cpu0 = cpu_seconds(pid)
    t_start = time.perf_counter()
    stop_at = t_start + time_limit

    def worker():
        while True:
            with lock:
                i = next_i[0]
                # The time limit bounds the level: no new request after it (in-flight ones finish
                # or hit their own timeout).
                if i >= n or time.perf_counter() > stop_at:
                    return
                next_i[0] += 1
            results[i] = client.stream_chat(model, prompts[i], max_tokens)
            results[i]["end"] = time.perf_counter() - t_start

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r is not None]
    wall = max((r["end"] for r in done), default=0.0) or 1e-9
    rss1 = read_rss(pid)
    cpu1 = cpu_seconds(pid)
    other = None
    if pid and cpu0 and cpu1:
        busy = (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])
        other = max(0.0, busy) / (wall * (os.cpu_count() or 1)) * 100
    ok = [r for r in done if r["ok"]]
    errs = [r["error"] for r in done if not r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = [g for r in ok for g in r["itl"]]
    return {
        "concurrency": conc, "planned": n, "sent": len(done), "ok": len(ok), "errors": len(errs),
        "error_samples": sorted(set(errs))[:5], "wall_s": wall,
        "req_per_s": len(ok) / wall, "gen_tok_per_s": tokens / wall, "tokens": tokens,
        "tok_per_req": tokens / len(ok) if ok else 0.0,
        "tokens_from_usage": all(r["usage"] for r in ok) if ok else True,
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99),
        "other_cpu_pct": other,
        "rss_start_mib": rss0[0] if rss0 else None, "rss_end_mib": rss1[0] if rss1 else None,
        "rss_anon_start_mib": rss0[1] if rss0 else None, "rss_anon_end_mib": rss1[1] if rss1 else None,
        "requests": done,
    }


def run_levels(client, levels, a, pid, label):
    model = client.model_id()
    # One untimed request first: lazy allocations, page faults on the weights, thread start-up.
    warm = client.stream_chat(model, "Hello!", 8)
    if not warm["ok"]:
        sys.exit(f"load_serve: {label}: the warm-up request failed: {warm['error']}")
    out = []
    for conc in levels:
        log(f"# {label}: concurrency {conc}, {max(a.requests, conc)} requests, max_tokens {a.max_tokens}")
        r = run_level(client, model, conc, a.requests, a.max_tokens, a.time_limit, a.seed, pid, not a.repeat_prompts)
        log(f"#   {r['ok']}/{r['planned']} ok, {r['gen_tok_per_s']:.1f} t/s, {r['req_per_s']:.2f} req/s, "
            f"{r['errors']} errors" + (f": {r['error_samples'][0]}" if r["error_samples"] else ""))
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# tables

def machine_line(load_start):
    return (f"{os.cpu_count()} CPUs, load average {load_start:.1f} at the start; "
            f"other CPU % = machine CPU time used by processes other than the server and this script "
            f"during the level (with --pid or --compare), in % of all CPUs: above a few %, distrust the level")


def pct(x):
    return "-" if x is None else f"{x:.0f}"


def ms(x):
    return "-" if x is None else f"{x * 1000:.1f}"


def mib(x):
    return "-" if x is None else f"{x:.0f}"


def table(label, rows):
    head = ("| C | ok/sent/planned | wall s | req/s | gen t/s | tok/req | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
            "| ITL p99 ms | errors | RSS MiB start→end | other CPU % |")
    lines = [f"**{label}**", "", head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        approx = "" if r["tokens_from_usage"] else "~"
        lines.append(
            f"| {r['concurrency']} | {r['ok']}/{r['sent']}/{r['planned']} | {r['wall_s']:.1f} | {r['req_per_s']:.2f} "
            f"| {approx}{r['gen_tok_per_s']:.1f} | {approx}{r['tok_per_req']:.1f} | {ms(r['ttft_p50'])} "
            f"| {ms(r['ttft_p99'])} | {ms(r['itl_p50'])} | {ms(r['itl_p99'])} | {r['errors']} "
            f"| {mib(r['rss_start_mib'])}→{mib(r['rss_end_mib'])} | {pct(r['other_cpu_pct'])} |")
    errs = [(r["concurrency"], e) for r in rows for e in r["error_samples"]]
    if errs:
        lines += ["", "errors (first distinct ones per level):"] + [f"- C={c}: {e}" for c, e in errs]
    return "\n".join(lines) + "\n"


def ratio(m, l):
    return "-" if m is None or l is None or l == 0 else f"{m / l:.2f}"


def compare_table(mrows, lrows):
    head = ("| C | gen t/s moerun | llama | ratio | req/s moerun | llama | ratio | tok/req m / l "
            "| TTFT p50 ms m / l | ratio | ITL p50 ms m / l | ratio | ITL p99 ms m / l | errors m / l "
            "| RSS end MiB m / l | other CPU % m / l |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    by_c = {r["concurrency"]: r for r in lrows}
    for m in mrows:
        l = by_c.get(m["concurrency"])
        if l is None:
            continue
        lines.append(
            f"| {m['concurrency']} | {m['gen_tok_per_s']:.1f} | {l['gen_tok_per_s']:.1f} "
            f"| {ratio(m['gen_tok_per_s'], l['gen_tok_per_s'])} | {m['req_per_s']:.2f} | {l['req_per_s']:.2f} "
            f"| {ratio(m['req_per_s'], l['req_per_s'])} | {m['tok_per_req']:.1f} / {l['tok_per_req']:.1f} "
            f"| {ms(m['ttft_p50'])} / {ms(l['ttft_p50'])} | {ratio(m['ttft_p50'], l['ttft_p50'])} "
            f"| {ms(m['itl_p50'])} / {ms(l['itl_p50'])} | {ratio(m['itl_p50'], l['itl_p50'])} "
            f"| {ms(m['itl_p99'])} / {ms(l['itl_p99'])} | {m['errors']} / {l['errors']} "
            f"| {mib(m['rss_end_mib'])} / {mib(l['rss_end_mib'])} "
            f"| {pct(m['other_cpu_pct'])} / {pct(l['other_cpu_pct'])} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# --compare: start the servers

def free_port():
    """A port the kernel considers free right now (llama-server takes a fixed --port; the tiny
    window until it binds is acceptable for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process with its log in a file (a pipe nobody drains would stall it)."""

    def __init__(self, name, cmd, logdir, env=None):
        self.name = name
        self.cmd = cmd
        self.log_path = logdir / f"{name}.log"
        self.logf = open(self.log_path, "wb")
        log(f"# starting {name}: {shlex.join(cmd)}  (log: {self.log_path})")
        # Own session: a Ctrl-C to this script does not hit the server mid-level; we stop it.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)

    def log_tail(self, n=30):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_listening(self, timeout):
        """moerun's port from its `listening on http://127.0.0.1:PORT` line (it was started with
        --port 0)."""
        pat = re.compile(r"listening on http://[^\s:/]+:(\d+)")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = pat.search(self.log_path.read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.fail(f"no 'listening on' line within {timeout:.0f}s")

    def wait_healthy(self, client, timeout):
        end = time.monotonic() + timeout
        st, body = 0, b""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} while loading")
            st, body = client.get("/health", timeout=2.0)
            if st == 200:
                return
            time.sleep(0.25)
        self.fail(f"/health not 200 within {timeout:.0f}s (last: {st} {body[:200]!r})")

    def fail(self, why):
        self.stop()
        sys.exit(f"load_serve: {self.name} {why}; log tail:\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"# {self.name} ignored SIGTERM for 15 s; killing it")
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def llama_version(exe):
    p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"version: .*", p.stdout + p.stderr)
    return m.group(0) if m else "?"


def ensure_gguf(a):
    gg = Path(a.gguf)
    if gg.exists():
        return gg
    # compare_llamacpp.py writes WORK/default/bf16.gguf from models/default (numpy + gguf packages);
    # run it as a child so this script itself stays standard-library only.
    if gg.resolve() != (Path(a.work) / "default" / "bf16.gguf").resolve():
        sys.exit(f"load_serve: {gg} is missing (only {a.work}/default/bf16.gguf is made here)")
    log(f"# {gg} missing: preparing it with compare_llamacpp.py")
    subprocess.run([sys.executable, str(HERE / "compare_llamacpp.py"), "--models", "default", "--dtypes", "bf16",
                    "--prepare-only", "--work", str(Path(a.work).resolve())], check=True, cwd=REPO)
    if not gg.exists():
        sys.exit(f"load_serve: compare_llamacpp.py did not write {gg}")
    return gg


def serve_and_load(name, cmd, port, a, levels, logdir):
    srv = Server(name, cmd, logdir)
    try:
        if port is None:
            port = srv.wait_listening(a.startup_timeout)
        client = Client(f"http://127.0.0.1:{port}", a.api_key, a.request_timeout)
        srv.wait_healthy(client, a.startup_timeout)
        rows = run_levels(client, levels, a, srv.proc.pid, name)
    finally:
        srv.stop()
    return rows


def compare(a, levels):
    for p, what in ((a.moerun, "--moerun"), (a.llama_server, "--llama-server")):
        if not p or not Path(p).exists():
            sys.exit(f"load_serve: {what} {p!r} not found")
    if not Path(a.model).is_dir():
        sys.exit(f"load_serve: --model {a.model} is not a directory")
    gg = ensure_gguf(a)
    logdir = Path(a.work) / "serve-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    key = ["--api-key", a.api_key] if a.api_key else []
    # Same slots, same per-slot context, same threads on both sides. llama-server's -c is the
    # total KV size that its -np slots share, so it gets ctx * parallel.
    mcmd = [a.moerun, "serve", "-m", a.model, "--host", "127.0.0.1", "--port", "0", "--parallel", str(a.parallel),
            "-c", str(a.ctx), "--threads", str(a.threads)] + key + shlex.split(a.moerun_args)
    def lcmd(port):
        return [a.llama_server, "-m", str(gg), "--host", "127.0.0.1", "--port", str(port), "-np", str(a.parallel),
                "-c", str(a.ctx * a.parallel), "-t", str(a.threads), "-tb", str(a.threads), "--no-webui"] \
            + key + shlex.split(a.llama_args)

    # Each pass starts each server afresh and runs every level; the engine that goes first flips
    # every pass, so slow drift of the machine (other jobs, thermals) hits both alike.
    passes = {"moerun": [], "llama": []}
    for p in range(a.passes):
        order = ["moerun", "llama"] if (p + a.llama_first) % 2 == 0 else ["llama", "moerun"]
        for name in order:
            tag = f"{name}-pass{p + 1}"
            if name == "moerun":
                rows = serve_and_load(tag, mcmd, None, a, levels, logdir)
            else:
                port = free_port()
                rows = serve_and_load(tag, lcmd(port), port, a, levels, logdir)
            passes[name].append(rows)
    # Per level, the pass with the highest generated t/s: on a shared machine the slow outliers are
    # other load, not the engine (every pass is kept in --json).
    best = {name: [max((run[i] for run in runs), key=lambda r: r["gen_tok_per_s"]) for i in range(len(levels))]
            for name, runs in passes.items()}
    return best, passes, {"moerun_cmd": shlex.join(mcmd), "llama_cmd": shlex.join(lcmd("PORT")),
                          "llama_version": llama_version(a.llama_server)}


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="server base URL (loopback only), e.g. http://127.0.0.1:8080")
    ap.add_argument("--concurrency", default="1,2,4,8,16", help="comma list of concurrency levels")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--time-limit", type=float, default=120, help="seconds after which a level starts no new request")
    ap.add_argument("--request-timeout", type=float, default=120, help="seconds one request may take")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the prompt list")
    ap.add_argument("--repeat-prompts", action="store_true",
                    help="send the list's prompts as they are, so they repeat across levels and passes "
                         "(default: each request's prompt starts with its own tag)")
    ap.add_argument("--api-key", default=os.environ.get("MOERUN_API_KEY"), help="sent as Bearer token")
    ap.add_argument("--pid", type=int, help="server process whose VmRSS is reported per level")
    ap.add_argument("--label", default="server", help="name of the server in the table")
    ap.add_argument("--json", help="write settings, summaries and every request's measurements here")
    g = ap.add_argument_group("--compare: start moerun serve and llama-server, one after the other")
    g.add_argument("--compare", action="store_true")
    g.add_argument("--moerun", default="build/moerun", help="moerun binary")
    g.add_argument("--model", default="models/default", help="model directory for moerun")
    g.add_argument("--llama-server", default="bench-models/llamacpp/build/bin/llama-server")
    g.add_argument("--gguf", default="bench-models/default/bf16.gguf", help="the same model for llama-server")
    g.add_argument("--work", default="bench-models", help="compare_llamacpp.py work dir; logs go to WORK/serve-logs")
    g.add_argument("--parallel", type=int, default=8, help="slots (moerun --parallel, llama-server -np)")
    g.add_argument("--threads", type=int, default=2, help="CPU threads of each server")
    g.add_argument("--ctx", type=int, default=2048, help="context per slot")
    g.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for /health 200")
    g.add_argument("--moerun-args", default="", help="extra moerun serve flags (one shell-quoted string)")
    g.add_argument("--llama-args", default="", help="extra llama-server flags (one shell-quoted string)")
    g.add_argument("--llama-first", action="store_true", help="run llama-server before moerun (in the first pass)")
    g.add_argument("--passes", type=int, default=1, help="start and load each server this many times (alternated)")
    a = ap.parse_args()

    try:
        levels = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        ap.error("--concurrency takes a comma list of integers")
    if not levels or min(levels) < 1 or a.requests < 1 or a.max_tokens < 1:
        ap.error("concurrency levels, --requests and --max-tokens must be >= 1")
    if a.time_limit <= 0 or a.request_timeout <= 0:
        ap.error("--time-limit and --request-timeout must be > 0")
    if a.compare:
        # Paths as given when they exist from here, else from the repository root (the defaults).
        for k in ("moerun", "model", "llama_server", "gguf", "work"):
            p = Path(getattr(a, k))
            if not p.is_absolute() and not p.exists():
                p = REPO / p
            setattr(a, k, str(p))
    settings = {k: v for k, v in vars(a).items() if k != "api_key"}
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")

    if a.compare:
        results, passes, info = compare(a, levels)
        report = (f"# moerun serve vs llama-server ({started})\n\n"
                  f"- moerun: `{info['moerun_cmd']}`\n- llama: `{info['llama_cmd']}` ({info['llama_version']})\n"
                  f"- {a.requests} requests per level, streamed chat, temperature 0, max_tokens {a.max_tokens}; "
                  f"{a.passes} pass(es) per engine, alternated; per level the pass with the best gen t/s\n"
                  f"- ratio = moerun / llama (rates: > 1 moerun better; latencies: < 1 moerun better)\n"
                  f"- {machine_line(load_start)}\n\n"
                  + table("moerun", results["moerun"]) + "\n" + table("llama-server", results["llama"]) + "\n"
                  + compare_table(results["moerun"], results["llama"]))
        print(report)
        if a.json:
            Path(a.json).write_text(json.dumps({"settings": settings, "started": started, **info,
                                                "best": results, "passes": passes}, indent=1))
        failed = any(r["errors"] for runs in passes.values() for rows in runs for r in rows)
        return 1 if failed else 0

    if not a.url:
        ap.error("--url is required (or --compare)")
    client = Client(a.url, a.api_key, a.request_timeout)
    st, body = client.get("/health")
    if st != 200:
        sys.exit(f"load_serve: GET /health -> {st} {body[:200]!r}")
    rows = run_levels(client, levels, a, a.pid, a.label)
    print(f"# load_serve {a.url} ({started}): {a.requests} requests per level, streamed chat, temperature 0, "
          f"max_tokens {a.max_tokens}\n\n- {machine_line(load_start)}\n\n" + table(a.label, rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": settings, "started": started, "results": rows}, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
