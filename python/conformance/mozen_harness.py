"""Starts real mozen-agent processes on 127.0.0.1 and talks to them with stock grpcio stubs
generated from proto/proto/*.proto (see run.sh). Nothing here knows the Rust code: only the
.proto files, docs/protocol.md and docs/operations.md.
"""

import atexit
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
GEN_DIR = os.environ.get("MOZEN_GEN_DIR", os.path.join(HERE, "generated"))
if GEN_DIR not in sys.path:
    sys.path.insert(0, GEN_DIR)

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

import mozen_pb2 as pb  # noqa: E402,F401
import mozen_pb2_grpc as pbg  # noqa: E402
import raft_pb2  # noqa: E402,F401
import raft_pb2_grpc  # noqa: E402


def bin_dir():
    d = os.environ.get("MOZEN_BIN_DIR") or os.path.join(REPO, "target", "debug")
    if not os.path.isabs(d):
        d = os.path.join(REPO, d)
    return d


def agent_bin():
    return os.path.join(bin_dir(), "mozen-agent")


_HELP = None


def agent_help():
    """`mozen-agent --help`, to detect optional flags of the binary under test."""
    global _HELP
    if _HELP is None:
        _HELP = subprocess.run(
            [agent_bin(), "--help"], capture_output=True, text=True, timeout=30
        ).stdout
    return _HELP


def has_flag(flag):
    return flag in agent_help()


# ---------- polling ----------


def eventually(what, cond, limit=30.0, interval=0.05):
    """Polls `cond` until it returns a truthy value (returned), failing after `limit` s."""
    deadline = time.monotonic() + limit
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except grpc.RpcError as e:  # a transient refusal while polling
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc.code()} {last_exc.details()})" if last_exc else ""
            raise AssertionError(f"timed out after {limit}s waiting for {what}{extra}")
        time.sleep(interval)


def free_port():
    """A free port below the ephemeral range (see testkit's free_port)."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    while True:
        port = 20000 + rng.randrange(12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


# ---------- errors ----------


class Details:
    """What an error status carries: code, message, ErrorInfo and RetryInfo."""

    def __init__(self, err):
        self.code = err.code()
        self.message = err.details() or ""
        self.trailing = dict(err.trailing_metadata() or ())
        self.initial = dict(err.initial_metadata() or ())
        self.reason = None
        self.domain = None
        self.metadata = {}
        self.retry = None  # seconds, when a RetryInfo came
        st = rpc_status.from_call(err)
        self.status = st
        if st is not None:
            for d in st.details:
                if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    d.Unpack(info)
                    self.reason, self.domain = info.reason, info.domain
                    self.metadata = dict(info.metadata)
                elif d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    r = error_details_pb2.RetryInfo()
                    d.Unpack(r)
                    self.retry = r.retry_delay.seconds + r.retry_delay.nanos / 1e9

    def header(self, name):
        return self.trailing.get(name) or self.initial.get(name)

    def __repr__(self):
        return f"<{self.code} {self.message[:200]!r} reason={self.reason} retry={self.retry}>"


def expect_error(fn, code=None, reason=None):
    """Runs `fn`, which must fail with a gRPC status: its Details."""
    try:
        r = fn()
    except grpc.RpcError as e:
        d = Details(e)
        if code is not None:
            assert d.code == code, f"expected {code}, got {d!r}"
        if reason is not None:
            assert d.reason == reason, f"expected reason {reason}, got {d!r}"
            assert d.domain == "mozen", d
            assert d.message.startswith(reason + ":"), d
        return d
    raise AssertionError(f"expected an error ({code}, {reason}), got a reply: {str(r)[:300]}")


# ---------- credentials ----------

ROLES = {
    # name: roles
    "node-1": "peer",
    "node-2": "peer",
    "node-3": "peer",
    "node-4": "peer",
    "alice": "client",
    "bob": "client",
    "pool": "worker",  # an unbound worker credential (may speak for any node)
    "node-7": "worker",  # bound to node 7, which does not exist
    "ops": "operator",
}


class Credentials:
    """Tokens minted with `mozen-agent token` and the access file listing them."""

    def __init__(self, root):
        self.root = root
        self.tokens = {}
        lines = []
        for name, role in ROLES.items():
            out = subprocess.run(
                [agent_bin(), "token", "--role", role, "--name", name],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            tok = out.stdout.strip()
            assert tok and out.stderr.strip(), "mozen-agent token printed no token or line"
            self.tokens[name] = tok
            path = os.path.join(root, f"{name}.token")
            with open(path, "w") as f:
                f.write(tok + "\n")
            os.chmod(path, 0o600)
            lines.append(out.stderr.strip())
        self.access_file = os.path.join(root, "access")
        with open(self.access_file, "w") as f:
            f.write("# minted by the conformance suite\n" + "\n".join(lines) + "\n")

    def token_file(self, name):
        return os.path.join(self.root, f"{name}.token")

    def metadata(self, name, client_id=None):
        md = []
        if name is not None:
            md.append(("authorization", "Bearer " + self.tokens[name]))
        if client_id is not None:
            md.append(("mozen-client-id", client_id))
        return tuple(md)


# ---------- agents and clusters ----------

# Every agent process this run started, killed at exit whatever happened.
_PROCS = []


@atexit.register
def _kill_all():
    for p in _PROCS:
        if p.poll() is None:
            p.kill()

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Reconnect quickly: an agent may be starting, or just closed an idle connection.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Each channel its own connection (not grpc's process-wide shared subchannels), so that a
    # test knows which connections it holds.
    ("grpc.use_local_subchannel_pool", 1),
]


def channel(addr):
    return grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)


class Agent:
    def __init__(self, cluster, node_id, addr):
        self.cluster = cluster
        self.id = node_id
        self.addr = addr
        self.dir = os.path.join(cluster.root, f"n{node_id}")
        self.log = os.path.join(cluster.root, f"n{node_id}.log")
        self.proc = None
        self._channel = None

    def start(self, peers, extra):
        creds = self.cluster.creds
        cmd = [
            agent_bin(),
            "--id", str(self.id),
            "--listen", self.addr,
            "--peers", peers,
            "--data-dir", self.dir,
            "--lease", "2s",
            "--voters", str(self.cluster.voters),
            "--token-file", creds.token_file(f"node-{self.id}"),
            "--access-file", creds.access_file,
        ] + list(extra)
        env = dict(os.environ)
        env["MOZEN_LOG"] = env.get("TEST_AGENT_LOG", "info,openraft=error")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=logf, stdin=subprocess.DEVNULL, env=env
        )
        logf.close()
        _PROCS.append(self.proc)

    @property
    def channel(self):
        if self._channel is None:
            self._channel = channel(self.addr)
        return self._channel

    def mozen(self):
        return pbg.MozenStub(self.channel)

    def worker(self):
        return pbg.MozenWorkerStub(self.channel)

    def raft(self):
        return raft_pb2_grpc.RaftStub(self.channel)

    def status(self, timeout=3):
        return self.mozen().Status(
            pb.StatusRequest(), metadata=self.cluster.creds.metadata("alice"), timeout=timeout
        )

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def log_tail(self, n=40):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""


class Cluster:
    """`n` agents, all voters (n in 1, 3, 5), with an access file and per-node peer tokens."""

    def __init__(self, creds, n=3, extra=(), name="cluster"):
        self.creds = creds
        self.name = name
        self.voters = n
        self.extra = list(extra)
        self.root = tempfile.mkdtemp(prefix=f"mozen-conf-{name}-")
        self.agents = [Agent(self, i + 1, f"127.0.0.1:{free_port()}") for i in range(n)]
        self.peers = ",".join(f"{a.id}@{a.addr}" for a in self.agents)
        # Values acknowledged to callers: key -> sha256 of result_json (read back at the end).
        self.acked = {}
        self._lock = threading.Lock()

    def start(self, ready_timeout=60):
        for a in self.agents:
            a.start(self.peers, self.extra)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            msg = self.logs()
            self.stop()
            raise AssertionError(f"cluster {self.name} did not become ready:\n{msg}")
        return self

    def wait_ready(self, limit):
        def listening():
            for a in self.agents:
                if not a.alive():
                    raise AssertionError(f"agent {a.id} exited: {a.proc.returncode}")
                host, port = a.addr.rsplit(":", 1)
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                except OSError:
                    return False
            return True

        eventually(f"cluster {self.name} listening", listening, limit=limit, interval=0.05)

        def ready():
            for a in self.agents:
                if not a.alive():
                    raise AssertionError(f"agent {a.id} exited: {a.proc.returncode}")
            sts = [a.status() for a in self.agents]
            leaders = {s.leader_id for s in sts if s.HasField("leader_id")}
            if len(leaders) != 1 or any(not s.HasField("leader_id") for s in sts):
                return False
            leader = self.by_id(leaders.pop())
            nodes = leader.mozen().Nodes(
                pb.NodesRequest(), metadata=self.creds.metadata("alice"), timeout=3
            ).nodes
            return len(nodes) == len(self.agents) and all(x.state == "active" for x in nodes)

        eventually(f"cluster {self.name} ready", ready, limit=limit, interval=0.1)

    def by_id(self, node_id):
        return next(a for a in self.agents if a.id == node_id)

    def by_addr(self, addr):
        return next((a for a in self.agents if a.addr == addr), None)

    def leader_term(self):
        """(leader id, term) as every agent reports it; fails when they disagree."""
        sts = [a.status() for a in self.agents]
        seen = {(s.leader_id if s.HasField("leader_id") else None, s.term) for s in sts}
        assert len(seen) == 1, f"agents disagree on leader/term: {seen}"
        lt = seen.pop()
        assert lt[0] is not None, "no leader"
        return lt

    def leader(self):
        return self.by_id(self.leader_term()[0])

    def followers(self):
        lid = self.leader_term()[0]
        return [a for a in self.agents if a.id != lid]

    def assert_stable(self, before):
        """Every agent is alive and reports the same leader and term as `before`."""
        for a in self.agents:
            assert a.alive(), f"agent {a.id} died:\n{a.log_tail()}"
        now = self.leader_term()
        assert now == before, f"leader/term changed: {before} -> {now}"

    def ack(self, key, result_json):
        with self._lock:
            self.acked[key] = hashlib.sha256(result_json.encode()).hexdigest()

    def assert_acked(self):
        """Every value acknowledged so far still reads back, the same, from the leader."""
        with self._lock:
            acked = dict(self.acked)
        c = Client(self, "alice")
        for key, digest in acked.items():
            r = c.leader_call("Get", pb.GetRequest(key=key), timeout=20)
            assert r.state == "done" and r.HasField("result_json"), f"{key}: {r.state}"
            got = hashlib.sha256(r.result_json.encode()).hexdigest()
            assert got == digest, f"{key}: value changed"

    def logs(self):
        return "\n".join(f"--- agent {a.id} ---\n{a.log_tail()}" for a in self.agents)

    def stop(self):
        for a in self.agents:
            a.stop()
        if os.environ.get("MOZEN_KEEP_DIRS"):
            return
        shutil.rmtree(self.root, ignore_errors=True)


class Client:
    """A caller with one credential (and optionally a mozen-client-id) that follows the
    leader for writes."""

    def __init__(self, cluster, token="alice", client_id=None, own_channels=False):
        self.cluster = cluster
        self.md = cluster.creds.metadata(token, client_id)
        self._leader_addr = None
        self._own = {}
        self.own_channels = own_channels

    def _channel(self, addr):
        if not self.own_channels:
            a = self.cluster.by_addr(addr)
            if a is not None:
                return a.channel
        ch = self._own.get(addr)
        if ch is None:
            ch = self._own[addr] = channel(addr)
        return ch

    def close(self):
        for ch in self._own.values():
            ch.close()
        self._own.clear()

    def stub(self, addr, service="mozen"):
        ch = self._channel(addr)
        return {
            "mozen": pbg.MozenStub,
            "worker": pbg.MozenWorkerStub,
            "raft": raft_pb2_grpc.RaftStub,
        }[service](ch)

    def call_at(self, addr, method, req, timeout=30, service="mozen"):
        return getattr(self.stub(addr, service), method)(req, metadata=self.md, timeout=timeout)

    def leader_call(self, method, req, timeout=30, service="mozen"):
        """Sends `req` to the leader, following MZ-NOT-LEADER redirects."""
        addrs = [a.addr for a in self.cluster.agents]
        addr = self._leader_addr or addrs[0]
        deadline = time.monotonic() + timeout
        hops = 0
        while True:
            try:
                r = self.call_at(addr, method, req, timeout=max(0.5, deadline - time.monotonic()),
                                 service=service)
                self._leader_addr = addr
                return r
            except grpc.RpcError as e:
                d = Details(e)
                hops += 1
                if time.monotonic() > deadline or hops > 20:
                    raise
                if d.reason == "MZ-NOT-LEADER":
                    nxt = d.header("mozen-leader-addr") or d.metadata.get("leader_addr")
                    if nxt:
                        addr = nxt
                        continue
                    time.sleep(0.1)
                elif d.code == grpc.StatusCode.UNAVAILABLE:
                    addr = addrs[(addrs.index(addr) + 1) % len(addrs)] if addr in addrs else addrs[0]
                    time.sleep(0.05)
                else:
                    raise

    def call(self, function, args_json, timeout=30, **kw):
        """Call and wait for its outcome (following Get{wait} when Call's wait ends first)."""
        r = self.leader_call("Call", pb.CallRequest(function=function, args_json=args_json, **kw),
                             timeout=timeout)
        deadline = time.monotonic() + timeout
        while r.state in ("queued", "running") and time.monotonic() < deadline:
            r = self.leader_call("Get", pb.GetRequest(key=r.key, wait=True, timeout_ms=5000),
                                 timeout=timeout)
        return r

    def submit(self, function, args_json, timeout=30, **kw):
        return self.leader_call(
            "Submit", pb.CallRequest(function=function, args_json=args_json, **kw), timeout=timeout
        )

    def get(self, key, wait=False, timeout_ms=0, timeout=30):
        return self.leader_call("Get", pb.GetRequest(key=key, wait=wait, timeout_ms=timeout_ms),
                                timeout=timeout)

    def wait_done(self, key, limit=30):
        deadline = time.monotonic() + limit
        while True:
            r = self.get(key, wait=True, timeout_ms=2000)
            if r.state not in ("queued", "running"):
                return r
            assert time.monotonic() < deadline, f"{key} still {r.state} after {limit}s"


class EchoLoad:
    """A background stream of small `echo` calls; every one must succeed."""

    def __init__(self, cluster, token="bob", tag="load"):
        self.cluster = cluster
        self.client = Client(cluster, token, own_channels=True)
        self.tag = tag
        self.ok = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            i += 1
            args = f'{{"{self.tag}": {i}, "t": {time.time_ns()}}}'
            try:
                r = self.client.call("echo", args, timeout=30)
                if r.HasField("result_json"):
                    self.ok += 1
                    self.cluster.ack(r.key, r.result_json)
                else:
                    self.errors.append(f"echo {i}: {r.state} {r.error.code} {r.error.message}")
            except grpc.RpcError as e:
                self.errors.append(f"echo {i}: {Details(e)!r}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()
        return False

    def check(self, at_least=1):
        assert not self.errors, f"background echo calls failed: {self.errors[:5]}"
        assert self.ok >= at_least, f"only {self.ok} background echo calls answered"


def kill_on_signal(clusters):
    """Kills the agents when the run is interrupted (SIGTERM from a time budget)."""

    def handler(signum, frame):
        for c in list(clusters()):
            c.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
