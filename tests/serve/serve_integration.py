#!/usr/bin/env python3
"""End-to-end test of `moerun serve` with the real `openai` client (and raw HTTP) over loopback.

    python3 tests/serve/serve_integration.py --moerun build/moerun --model models/default [--sanitized]

Registered in tests/serve/tests.cmake. Exit 77 (ctest: skipped) under --sanitized (the model runs
too slowly in a sanitizer build for the request deadlines) and when the model directory is
missing. The `openai` package is pip-installed when it does not import; a failed install fails
the test (it is a dependency of the test, not an optional extra).

Servers started here, each on an ephemeral port (--port 0, read back from the
"listening on http://127.0.0.1:PORT" line on stderr):
  main   --parallel 4 -c 1024 --threads 2, no API key: every API test, then SIGTERM (clean exit 0)
  auth   the same with --api-key: 401 without / with a wrong key, 200 with it, /health open
  env    the key from MOERUN_API_KEY instead of the flag (one short check)
The tests assume greedy decoding is deterministic for a given prompt, including when requests
share a batch (the batched result must equal the one-request result).
"""

import argparse
import collections
import http.client
import importlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

SKIP = 77
REQUEST_TIMEOUT = 120.0   # any single request
STARTUP_TIMEOUT = 120.0   # from spawn to GET /health 200
CTX = 1024                # -c per slot; the context-overflow test depends on it
ARGS = None               # parsed command line
MAIN = None               # the main Server


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_openai():
    """Import openai, installing it from PyPI first when needed."""
    try:
        return importlib.import_module("openai")
    except ImportError:
        pass
    log("serve_integration: installing the openai package (python3 -m pip install --quiet openai)")
    cmds = [[sys.executable, "-m", "pip", "install", "--quiet", "openai"],
            # an externally managed interpreter (PEP 668) refuses system installs; try the user site
            [sys.executable, "-m", "pip", "install", "--quiet", "--user", "openai"]]
    for cmd in cmds:
        if subprocess.run(cmd).returncode == 0:
            break
    else:
        sys.exit("serve_integration: FAILED: could not pip install openai")
    import site
    if site.getusersitepackages() not in sys.path:
        sys.path.append(site.getusersitepackages())
    importlib.invalidate_caches()
    return importlib.import_module("openai")


# ----------------------------------------------------------------------------------------------
# the server process

class Server:
    def __init__(self, name, extra_args=(), env_extra=None):
        self.name = name
        cmd = [ARGS.moerun, "serve", "-m", ARGS.model, "--host", "127.0.0.1", "--port", "0",
               "--parallel", "4", "-c", str(CTX), "--threads", "2", *extra_args]
        env = dict(os.environ)
        env.pop("MOERUN_API_KEY", None)  # only where a test sets it
        env.update(env_extra or {})
        self.cmd = cmd
        self.lines = collections.deque(maxlen=200)  # stderr tail, for failure messages
        self.port = None
        self.listening = threading.Event()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        # Drain stderr for the server's whole life: a full pipe would block its logging.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _read(self):
        pat = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = pat.search(line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self.listening.set()
        self.listening.set()  # EOF: wake the waiter (it sees no port)

    def tail(self):
        return "\n".join(self.lines)

    def _wait_ready(self):
        t0 = time.monotonic()
        if not self.listening.wait(STARTUP_TIMEOUT) or self.port is None:
            raise RuntimeError(f"{self.name}: no 'listening on http://127.0.0.1:PORT' line on stderr within "
                               f"{STARTUP_TIMEOUT:.0f}s (exit code {self.proc.poll()}); command {self.cmd}\n"
                               f"stderr:\n{self.tail()}")
        last = None
        while time.monotonic() - t0 < STARTUP_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: exited with {self.proc.returncode} while loading\n{self.tail()}")
            try:
                st, _, body = fetch(self.port, "GET", "/health", timeout=5)
                last = (st, body[:200])
                if st == 200:
                    return
                if st != 503:  # 503 {"status":"loading"} is the only other expected answer
                    raise RuntimeError(f"{self.name}: GET /health -> {st} {body[:300]!r}")
            except OSError as e:
                last = repr(e)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: /health not 200 within {STARTUP_TIMEOUT:.0f}s (last {last})\n{self.tail()}")

    def terminate(self, timeout=10.0):
        """SIGTERM; the exit code, or None when it did not exit in time (then it is killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.reader.join(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------------------------
# raw HTTP helpers

def fetch(port, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT):
    """(status, headers dict with lower-case names, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = dict(headers or {})
        if body is not None:
            if not isinstance(body, (bytes, bytearray)):
                body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def metrics(port):
    """{name: summed value over its label sets} of GET /metrics, and the raw text."""
    st, _, body = fetch(port, "GET", "/metrics", timeout=10)
    if st != 200:
        raise AssertionError(f"GET /metrics -> {st}: {body[:500]!r}")
    text = body.decode()
    vals = collections.defaultdict(float)
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and not line.startswith("#"):
            vals[m.group(1)] += float(m.group(3))
    return vals, text


def sse_events(body):
    """The `data:` payloads of an SSE body, in order (b"[DONE]" kept as is)."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())
    return out


# ----------------------------------------------------------------------------------------------

class Base(unittest.TestCase):
    maxDiff = 4000
    server = None  # set by subclasses' setUpClass

    @classmethod
    def make_client(cls, api_key="sk-no-key-needed", port=None):
        return OPENAI.OpenAI(base_url=f"http://127.0.0.1:{port or cls.server.port}/v1", api_key=api_key,
                             timeout=REQUEST_TIMEOUT, max_retries=0)  # no retries: they would hide failures

    def req(self, method, path, body=None, headers=None, timeout=REQUEST_TIMEOUT):
        return fetch(self.server.port, method, path, body, headers, timeout)

    def assert_error(self, got, status, param=None, says=()):
        """An OpenAI-shaped error body with this status (and param / message words)."""
        st, _, body = got
        self.assertEqual(st, status, f"expected HTTP {status}, got {st}: {body[:500]!r}")
        try:
            err = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            self.fail(f"HTTP {st} body is not {{\"error\": {{...}}}}: {body[:500]!r}")
        for k in ("message", "type", "param", "code"):
            self.assertIn(k, err, f"error object lacks {k!r}: {err}")
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"], f"empty error message: {err}")
        if param is not None:
            self.assertEqual(err["param"], param, f"error.param: {err}")
        for w in says:
            self.assertIn(w.lower(), err["message"].lower(), f"error.message should mention {w!r}: {err}")
        return err

    def run(self, result=None):
        # On a failure the server's stderr tail says more than the assertion.
        n = len(result.failures) + len(result.errors) if result else 0
        r = super().run(result)
        if result and len(result.failures) + len(result.errors) > n and self.server:
            log(f"--- {self.server.name} server stderr (tail) after {self.id()}:\n{self.server.tail()}\n---")
        return r


class Api(Base):
    """Everything against the main server (no API key)."""

    @classmethod
    def setUpClass(cls):
        cls.server = MAIN
        cls.client = cls.make_client()
        cls.model = cls.client.models.list().data[0].id
        cls._greedy = {}

    # -- helpers

    def chat(self, content, **kw):
        kw.setdefault("temperature", 0)
        kw.setdefault("max_tokens", 48)
        return self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": content}],
                                                   **kw)

    def greedy(self, content, max_tokens=48):
        """The greedy answer to one prompt alone (cached: several tests compare against it)."""
        key = (content, max_tokens)
        if key not in self._greedy:
            r = self.chat(content, max_tokens=max_tokens)
            self._greedy[key] = (r.choices[0].message.content, r.choices[0].finish_reason)
        return self._greedy[key]

    def stream_text(self, **kw):
        """Concatenated content deltas of a streamed chat request, and its chunks."""
        chunks = list(self.client.chat.completions.create(model=self.model, stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks

    def usage_ok(self, u):
        self.assertIsNotNone(u, "no usage")
        self.assertGreater(u.prompt_tokens, 0, u)
        self.assertGreater(u.completion_tokens, 0, u)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens, u)

    # -- the OpenAI client

    def test_chat(self):
        r = self.chat("What is the capital of France?")
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(len(r.choices), 1)
        text = r.choices[0].message.content
        self.assertIn("Paris", text, f"greedy answer: {text!r}")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.usage_ok(r.usage)
        self.assertTrue(r.id, "empty id")

    def test_chat_stream(self):
        q = "What is the capital of France?"
        want, want_finish = self.greedy(q)
        text, chunks = self.stream_text(messages=[{"role": "user", "content": q}], temperature=0, max_tokens=48,
                                        stream_options={"include_usage": True})
        self.assertEqual(text, want, "streamed deltas differ from the non-streamed answer")
        self.assertGreaterEqual(len(chunks), 3, chunks)
        for c in chunks:
            self.assertEqual(c.object, "chat.completion.chunk")
        last, before = chunks[-1], chunks[-2]
        self.assertEqual(last.choices, [], f"the usage chunk must have empty choices: {last}")
        self.usage_ok(last.usage)
        self.assertEqual(len(before.choices), 1)
        self.assertEqual(before.choices[0].finish_reason, want_finish, f"last chunk before usage: {before}")
        for c in chunks[:-2]:
            self.assertIsNone(c.choices[0].finish_reason, f"finish_reason before the end: {c}")
            self.assertIsNone(c.usage, f"usage before the usage chunk: {c}")
        # Raw: every event a JSON `data:` line, and the stream ends with data: [DONE].
        st, hdr, body = self.req("POST", "/v1/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": q}], "temperature": 0,
            "max_tokens": 8, "stream": True})
        self.assertEqual(st, 200, body[:500])
        self.assertIn("text/event-stream", hdr.get("content-type", ""), hdr)
        self.assertTrue(body.rstrip().endswith(b"data: [DONE]"), f"stream end: {body[-200:]!r}")
        events = sse_events(body)
        self.assertEqual(events[-1], b"[DONE]")
        for e in events[:-1]:
            json.loads(e)  # every other event is JSON

    def test_max_tokens(self):
        r = self.chat("Write a long story about a dragon who lives in a mountain.", max_tokens=5)
        self.assertEqual(r.usage.completion_tokens, 5, r.usage)
        self.assertEqual(r.choices[0].finish_reason, "length")
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            temperature=0, max_completion_tokens=5)
        self.assertEqual(r.usage.completion_tokens, 5, r.usage)
        self.assertEqual(r.choices[0].finish_reason, "length")

    def test_stop_string(self):
        q = "Write a short story about a robot."
        text, _ = self.greedy(q, 64)
        words = [m for m in re.finditer(r"[A-Za-z]{4,}", text) if m.start() > 0]
        self.assertGreater(len(words), 4, f"too little text to pick a stop word from: {text!r}")
        word = words[len(words) // 2].group(0)
        # The server stops at the first occurrence anywhere in the output, inside a word too.
        want = text[:text.index(word)]
        r = self.chat(q, max_tokens=64, stop=[word])
        self.assertEqual(r.choices[0].message.content, want, f"stop={word!r} in {text!r}")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        # Streamed: the text held back while it might begin the stop string must not leak.
        got, chunks = self.stream_text(messages=[{"role": "user", "content": q}], temperature=0, max_tokens=64,
                                       stop=word)
        self.assertEqual(got, want, f"streamed, stop={word!r}")
        self.assertEqual([c.choices[0].finish_reason for c in chunks if c.choices][-1], "stop")

    def test_seed(self):
        q = "Tell me something surprising about the ocean."

        def sample(seed):
            return self.chat(q, temperature=1.0, seed=seed, max_tokens=24).choices[0].message.content

        a, b = sample(1234), sample(1234)
        self.assertEqual(a, b, "same seed, different texts")
        # Another seed usually differs; at least one of four must (a fixed seed ignored would not).
        others = [sample(s) for s in (1, 2, 3, 4)]
        self.assertTrue(any(o != a for o in others), f"seeds 1..4 all gave the seed-1234 text {a!r}")

    def test_completions(self):
        r = self.client.completions.create(model=self.model, prompt="The capital of France is", max_tokens=8,
                                           temperature=0)
        self.assertEqual(r.object, "text_completion")
        text = r.choices[0].text
        self.assertTrue(text, "empty completion")
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.usage_ok(r.usage)
        chunks = list(self.client.completions.create(model=self.model, prompt="The capital of France is",
                                                     max_tokens=8, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), text)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, r.usage.completion_tokens)
        # raw prompt: no chat template, so the prompt token count is small and exact-ish
        st, _, body = self.req("POST", "/tokenize", {"content": "The capital of France is"})
        self.assertEqual(st, 200, body)
        n = len(json.loads(body)["tokens"])
        self.assertLessEqual(abs(r.usage.prompt_tokens - n), 1, f"prompt_tokens {r.usage.prompt_tokens}, tokenize {n}")

    def test_concurrent_equals_sequential(self):
        prompts = ["Explain photosynthesis.", "Why is the sky blue?", "Write a haiku about the ocean.",
                   "Give me three tips for learning a new language."]
        alone = [self.greedy(p, 32)[0] for p in prompts]
        got = [None] * 4
        errs = []

        def one(i):
            try:
                got[i] = self.chat(prompts[i], max_tokens=32).choices[0].message.content
            except Exception as e:  # noqa: BLE001 - reported below
                errs.append(f"{prompts[i]!r}: {e!r}")

        ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(REQUEST_TIMEOUT + 10)
        self.assertEqual(errs, [])
        for p, a, g in zip(prompts, alone, got):
            self.assertEqual(g, a, f"batched != alone for {p!r}")

    def test_cancel_frees_slot(self):
        before, _ = metrics(self.server.port)
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=REQUEST_TIMEOUT)
        c.request("POST", "/v1/chat/completions", body=json.dumps({
            "model": self.model, "stream": True, "temperature": 0, "max_tokens": 400,
            "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]}),
            headers={"Content-Type": "application/json"})
        sock = c.sock  # http.client may drop its reference once the response says Connection: close
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        seen = 0
        while seen < 3:
            line = r.readline()
            self.assertTrue(line, "stream ended before 3 events")
            if line.startswith(b"data:"):
                seen += 1
        # Hang up mid-stream (shutdown, so the FIN goes out even though `r` still holds the socket).
        sock.shutdown(socket.SHUT_RDWR)
        r.close()
        c.close()
        t0 = time.monotonic()
        active = None
        while time.monotonic() - t0 < 10:
            vals, _ = metrics(self.server.port)
            active = vals.get("moerun_requests_active")
            if active == 0:
                break
            time.sleep(0.1)
        self.assertIsNotNone(active, "no moerun_requests_active gauge in /metrics")
        self.assertEqual(active, 0, "moerun_requests_active did not return to 0 within 10 s of the disconnect")
        after, _ = metrics(self.server.port)
        gen = after["moerun_generated_tokens_total"] - before["moerun_generated_tokens_total"]
        self.assertLess(gen, 400, "the cancelled request generated all its 400 tokens")
        t1 = time.monotonic()
        r2 = self.chat("Say hello.", max_tokens=4)
        self.assertTrue(r2.choices[0].message.content)
        self.assertLess(time.monotonic() - t1, 30, "the request after a cancellation was slow")

    # -- errors, raw HTTP

    def test_error_malformed_json(self):
        self.assert_error(self.req("POST", "/v1/chat/completions", b'{"model": "m", "messages": [',
                                   {"Content-Type": "application/json"}), 400)

    def test_error_wrong_type(self):
        self.assert_error(self.req("POST", "/v1/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
            400, param="temperature")

    def test_error_n(self):
        self.assert_error(self.req("POST", "/v1/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": "hi"}], "n": 2}), 400, param="n")

    def test_error_context_overflow(self):
        content = "hello " * 3000
        st, _, body = self.req("POST", "/tokenize", {"content": content})
        n = len(json.loads(body)["tokens"]) if st == 200 else 3000
        self.assertGreater(n, CTX, "the long prompt is not longer than the context")
        err = self.assert_error(self.req("POST", "/v1/chat/completions", {
            "model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}), 400)
        nums = [int(x) for x in re.findall(r"\d+", err["message"])]
        self.assertIn(CTX, nums, f"message should name the context size {CTX}: {err}")
        self.assertTrue(any(x > CTX for x in nums), f"message should name the prompt length: {err}")

    def test_error_not_found(self):
        self.assert_error(self.req("GET", "/v1/no-such-endpoint"), 404)
        self.assert_error(self.req("POST", "/v1/engines/x/completions", {"prompt": "x"}), 404)

    def test_error_body_too_large(self):
        # 8 MiB + 1 KiB of valid JSON. The server may answer as soon as it sees Content-Length or
        # only after reading 8 MiB, and may close the socket while we still send: so send in pieces
        # and stop as soon as an answer is readable or the peer hangs up.
        pad = b" " * ((8 << 20) + 1024)
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]' + pad + b"}"
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=REQUEST_TIMEOUT)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            off, end = 0, time.monotonic() + REQUEST_TIMEOUT
            while off < len(body) and time.monotonic() < end:
                r, w, _ = select.select([s], [s], [], 1.0)
                if r:
                    break
                if w:
                    try:
                        off += s.send(body[off:off + 65536])
                    except (BrokenPipeError, ConnectionResetError):
                        break
            resp = b""
            while b"\r\n\r\n" not in resp:
                try:
                    d = s.recv(65536)
                except ConnectionResetError:
                    break
                if not d:
                    break
                resp += d
        finally:
            s.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 413") or resp.startswith(b"HTTP/1.0 413"),
                        f"expected 413, got {resp[:300]!r} (sent {off} of {len(body)} bytes)")

    def test_error_invalid_utf8(self):
        body = b'{"model": "m", "messages": [{"role": "user", "content": "bad \xff\xfe bytes"}]}'
        self.assert_error(self.req("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}),
                          400, says=("UTF-8",))

    # -- other endpoints

    def test_models(self):
        st, _, body = self.req("GET", "/v1/models")
        self.assertEqual(st, 200, body)
        j = json.loads(body)
        self.assertEqual(j.get("object"), "list", j)
        self.assertEqual(len(j["data"]), 1, j)
        self.assertEqual(j["data"][0].get("object"), "model", j)
        self.assertTrue(j["data"][0].get("id"), j)

    def test_health(self):
        st, _, body = self.req("GET", "/health")
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body).get("status"), "ok", body)

    def test_tokenize_roundtrip(self):
        st, _, body = self.req("POST", "/tokenize", {"content": "Hello world", "add_special": False})
        self.assertEqual(st, 200, body)
        toks = json.loads(body)["tokens"]
        self.assertTrue(toks and all(isinstance(t, int) for t in toks), body)
        st, _, body = self.req("POST", "/detokenize", {"tokens": toks})
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["content"], "Hello world")
        self.assert_error(self.req("POST", "/detokenize", {"tokens": [10 ** 9]}), 400)

    def test_metrics(self):
        before, _ = metrics(self.server.port)
        r = self.chat("Say hello.", max_tokens=4)
        after, text = metrics(self.server.port)
        _, hdr, _ = self.req("GET", "/metrics")
        self.assertIn("text/plain", hdr.get("content-type", ""), hdr)
        names = ["moerun_requests_total", "moerun_prompt_tokens_total", "moerun_generated_tokens_total",
                 "moerun_requests_active", "moerun_requests_queued", "moerun_step_seconds"]
        for n in names:
            self.assertRegex(text, rf"(?m)^# HELP {n} \S", f"no # HELP line for {n}")
            self.assertRegex(text, rf"(?m)^# TYPE {n} (counter|gauge|histogram|summary)\s*$", f"no # TYPE for {n}")
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r"^moerun_[a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEaINnf]+( \d+)?$",
                                 f"not a Prometheus sample line: {line!r}")
        self.assertGreaterEqual(after["moerun_requests_total"] - before["moerun_requests_total"], 1)
        self.assertGreaterEqual(after["moerun_generated_tokens_total"] - before["moerun_generated_tokens_total"],
                                r.usage.completion_tokens)
        # Prompt tokens are either prefilled or reused from a slot's cache (counted apart).
        prefilled = after["moerun_prompt_tokens_total"] - before["moerun_prompt_tokens_total"]
        reused = after["moerun_prompt_tokens_cached_total"] - before["moerun_prompt_tokens_cached_total"]
        self.assertGreaterEqual(prefilled + reused, r.usage.prompt_tokens)
        self.assertGreaterEqual(reused, r.usage.prompt_tokens_details.cached_tokens)


class Auth(Base):
    """A server with --api-key: the key guards the API, not /health."""
    KEY = "test-key-0123456789"

    @classmethod
    def setUpClass(cls):
        cls.server = Server("auth", ["--api-key", cls.KEY])

    @classmethod
    def tearDownClass(cls):
        cls.server.terminate()

    def check_guarded(self, port, key):
        for hdr in ({}, {"Authorization": "Bearer wrong-key"}):
            got = fetch(port, "GET", "/v1/models", headers=hdr)
            self.assert_error(got, 401)
        st, _, body = fetch(port, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        self.assertEqual(st, 200, body)
        st, _, body = fetch(port, "GET", "/health")
        self.assertEqual(st, 200, f"/health must not need the key: {st} {body!r}")

    def test_raw(self):
        self.check_guarded(self.server.port, self.KEY)
        self.assert_error(self.req("POST", "/v1/chat/completions",
                                   {"model": "m", "messages": [{"role": "user", "content": "hi"}]}), 401)

    def test_openai_client(self):
        with self.assertRaises(OPENAI.AuthenticationError):
            self.make_client("wrong-key").models.list()
        c = self.make_client(self.KEY)
        mid = c.models.list().data[0].id
        r = c.chat.completions.create(model=mid, messages=[{"role": "user", "content": "Say hello."}],
                                      temperature=0, max_tokens=4)
        self.assertTrue(r.choices[0].message.content)

    def test_env_key(self):
        srv = Server("env", env_extra={"MOERUN_API_KEY": "env-key-42"})
        try:
            self.check_guarded(srv.port, "env-key-42")
        finally:
            srv.terminate()


class Shutdown(Base):
    """Last: the main server survived everything above and stops cleanly on SIGTERM."""

    @classmethod
    def setUpClass(cls):
        cls.server = MAIN

    def test_sigterm(self):
        st, _, body = self.req("GET", "/health", timeout=10)
        self.assertEqual(st, 200, f"server unhealthy after the tests: {st} {body!r}")
        t0 = time.monotonic()
        rc = self.server.terminate(10)
        self.assertIsNotNone(rc, "no exit within 10 s of SIGTERM")
        self.assertEqual(rc, 0, f"exit code after SIGTERM ({time.monotonic() - t0:.1f}s)")


# ----------------------------------------------------------------------------------------------

def main():
    global ARGS, MAIN, OPENAI
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moerun", required=True, help="the moerun binary")
    ap.add_argument("--model", required=True, help="model directory (models/default)")
    ap.add_argument("--sanitized", action="store_true", help="sanitizer build: skip (exit 77)")
    ap.add_argument("-k", dest="patterns", action="append", default=[],
                    help="only tests whose name contains this (unittest -k), repeatable")
    ap.add_argument("-v", "--verbose", action="store_true")
    ARGS = ap.parse_args()
    if ARGS.sanitized:
        print("serve_integration: skipped: sanitizer build (too slow for the request deadlines)")
        return SKIP
    if not (Path(ARGS.model) / "config.json").exists():
        print(f"serve_integration: skipped: no model at {ARGS.model} (scripts/setup.sh makes models/default)")
        return SKIP
    if not Path(ARGS.moerun).exists():
        print(f"serve_integration: FAILED: {ARGS.moerun} not found")
        return 1
    OPENAI = ensure_openai()
    # httpx (under openai) honours HTTP(S)_PROXY; loopback must never go through a proxy.
    for var in ("NO_PROXY", "no_proxy"):
        os.environ[var] = ",".join(x for x in (os.environ.get(var), "127.0.0.1", "localhost") if x)

    t0 = time.monotonic()
    try:
        MAIN = Server("main")
    except RuntimeError as e:
        print(f"serve_integration: FAILED to start the server: {e}")
        return 1
    log(f"serve_integration: main server on port {MAIN.port} (ready in {time.monotonic() - t0:.1f}s)")
    try:
        loader = unittest.TestLoader()
        if ARGS.patterns:
            loader.testNamePatterns = [f"*{p}*" for p in ARGS.patterns]
        suite = unittest.TestSuite()
        # Fixed order: the API tests, the auth servers, and the shutdown of the main server last.
        for cls in (Api, Auth, Shutdown):
            suite.addTests(loader.loadTestsFromTestCase(cls))
        res = unittest.TextTestRunner(verbosity=2 if ARGS.verbose else 1, stream=sys.stdout).run(suite)
    finally:
        MAIN.kill()
    log(f"serve_integration: {time.monotonic() - t0:.0f}s")
    return 0 if res.wasSuccessful() else 1


OPENAI = None

if __name__ == "__main__":
    sys.exit(main())
