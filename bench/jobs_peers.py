"""The job-queue peers of bench/jobs.py, and the measurement helpers every system shares.

Not run by hand: bench/jobs.py spawns each peer's worker node as

    python bench/jobs_peers.py worker {raw10,raw100,pgqueuer,procrastinate} DATABASE_URL

A system (JobSystem) is three things: install(url) lays its schema in a fresh database;
client(url) yields a JobClient that enqueues (all in one transaction, one per transaction, in
batches) and counts the jobs not yet completed; worker(url, collector) runs one worker node
for the block, entered once the node is ready to take jobs. Every handler is a no-op that
calls Probe.hit(key): the probe stamps the handler's start (time.time()) and sends the
stamps, batched, over a unix datagram socket to the benchmark's Collector. That gives pickup
latency, and tells when every job has run without polling the database (only then is the
system's table polled, every 5 ms, for completion). A peer's worker calls Probe.ready() once
it LISTENs for new jobs: that is when its node is up.

The peers:
- raw10 / raw100: a plain psycopg loop claiming 10 (100) pending rows with FOR UPDATE SKIP
  LOCKED, running them, marking them done; woken by LISTEN/NOTIFY, polling every second else.
- pgqueuer: a QueueManager on one asyncpg connection (AsyncpgDriver), batch_size 10, an async
  entrypoint, on uvloop as `pgq run` does.
- procrastinate: App on its PsycopgConnector (default pool), worker concurrency 10, an async
  task, LISTEN/NOTIFY on (its default).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
from _support import stop

PROBE_ENV = "BENCH_JOBS_PROBE"
NOOP = "noop"
PICKUP_KEYS = 1_000_000_000  # pickup jobs' keys start here; throughput's at 0, warm-up's below


# ---------------------------------------------------------------- handler side and bench side


class Probe:
    """In the worker: stamps each handler start and ships the stamps in batches."""

    FLUSH_SECS = 0.01
    MAX_BATCH = 200

    def __init__(self, address: str) -> None:
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._lock = threading.Lock()
        self._stamps: list[str] = []
        threading.Thread(target=self._flush_forever, daemon=True).start()

    @classmethod
    def from_env(cls) -> Probe:
        return cls(os.environ[PROBE_ENV])

    def ready(self) -> None:
        """Tell the benchmark this worker node now takes jobs."""
        self._sock.sendto(b"ready", self._address)

    def hit(self, key: int) -> None:
        stamp = f"{key} {time.time():.6f}"
        with self._lock:
            self._stamps.append(stamp)
            full = len(self._stamps) >= self.MAX_BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            stamps, self._stamps = self._stamps, []
        if stamps:
            self._sock.sendto("\n".join(stamps).encode(), self._address)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECS)
            self.flush()


class Collector:
    """In the benchmark: receives the probes' stamps (first start per key)."""

    def __init__(self, folder: Path) -> None:
        self.address = str(folder / "probe.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.address)
        self._sock.settimeout(0.2)
        self._starts: dict[int, float] = {}
        self._ready = 0
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            with self._changed:
                if data == b"ready":
                    self._ready += 1
                else:
                    for line in data.decode().splitlines():
                        key, at = line.split()
                        self._starts.setdefault(int(key), float(at))
                self._changed.notify_all()

    def reset(self) -> None:
        with self._changed:
            self._starts.clear()
            self._ready = 0

    def wait(self, count: int, timeout: float, alive: Callable[[], bool]) -> dict[int, float]:
        """Block until `count` distinct jobs have started; return {key: start wall time}."""
        self._wait_for(lambda: len(self._starts) >= count, timeout, alive,
                       lambda: f"{len(self._starts)} of {count} jobs ran in {timeout} s")
        with self._changed:
            return dict(self._starts)

    def wait_ready(self, alive: Callable[[], bool], timeout: float = 120) -> None:
        """Block until a worker has called Probe.ready() since the last reset()."""
        self._wait_for(lambda: self._ready > 0, timeout, alive,
                       lambda: f"the worker was not ready in {timeout} s")

    def _wait_for(self, done: Callable[[], bool], timeout: float, alive: Callable[[], bool],
                  failure: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                if not alive():
                    raise RuntimeError("the worker exited")
                if time.monotonic() > deadline:
                    raise TimeoutError(failure())
                self._changed.wait(0.5)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self._sock.close()


class PostgresCpu:
    """CPU seconds (user + system) of a PostgreSQL server on this machine, between start()
    and stop(): the postmaster, its live children, and every child that exited meanwhile
    (the postmaster's cutime/cstime, as it reaps its backends). None when the server is not
    local (its backend pid is not the child of a postgres process that started when the
    server says: a few seconds before pg_postmaster_start_time(), under load)."""

    def __init__(self, url: str) -> None:
        self.postmaster: psutil.Process | None = None
        self._start = 0.0
        with psycopg.connect(url) as conn, contextlib.suppress(psutil.Error):
            pid, started = conn.execute(
                "SELECT pg_backend_pid(), extract(epoch FROM pg_postmaster_start_time())"
            ).fetchone()
            parent = psutil.Process(pid).parent()  # while that backend still lives
            # a remote server's backend pid may name some unrelated local process
            lead = float(started) - parent.create_time() if parent else -1
            if parent and "postgres" in parent.name() and -5 < lead < 120:
                self.postmaster = parent

    def total(self) -> float:
        assert self.postmaster is not None
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total

    def start(self) -> None:
        if self.postmaster:
            self._start = self.total()

    def stop(self) -> float | None:
        return self.total() - self._start if self.postmaster else None


# ---------------------------------------------------------------- what a system provides


class JobClient(abc.ABC):
    """The enqueuing side of a system, on its own connection(s)."""

    @abc.abstractmethod
    def enqueue_txn(self, keys: list[int]) -> None:
        """One no-op job per key, all in ONE transaction, committed on return."""

    @abc.abstractmethod
    def enqueue_one(self, key: int) -> float:
        """One no-op job in its own transaction; the time.time() right after its commit."""

    @abc.abstractmethod
    def enqueue_batches(self, keys: list[int], batch: int) -> None:
        """The jobs in transactions of `batch` jobs, with the system's batch API."""

    @abc.abstractmethod
    def remaining(self) -> int:
        """Jobs enqueued and not yet completed (completion committed)."""


class JobSystem(abc.ABC):
    name: str

    @abc.abstractmethod
    def install(self, url: str) -> None:
        """Lay the system's schema in the (fresh, empty) database."""

    @abc.abstractmethod
    def client(self, url: str) -> contextlib.AbstractContextManager[JobClient]: ...

    @abc.abstractmethod
    def worker(self, url: str, collector: Collector) -> contextlib.AbstractContextManager[
            Callable[[], bool]]:
        """Run one worker node for the block, its no-op handler calling Probe.hit(key), with
        PROBE_ENV=collector.address in its environment. Enter the block only once the node
        takes jobs (it may call Probe.ready() then, and this wait for collector.wait_ready);
        yield a callable telling whether it still runs. Stop it, whatever happens, when the
        block ends."""


@contextlib.contextmanager
def spawn_worker(argv: list[str], env: dict[str, str]) -> Iterator[Callable[[], bool]]:
    """Run a worker process for the block, then SIGTERM it (SIGKILL after 10 s); print the
    tail of its output when the block fails."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT)
        failed = True
        try:
            yield lambda: proc.poll() is None
            failed = False
        finally:
            stop(proc, 10)
            if failed:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                sys.stderr.write(f"--- {' '.join(argv[:4])} output:\n{tail}\n")


@contextlib.contextmanager
def ready_worker(argv: list[str], env: dict[str, str],
                 collector: Collector) -> Iterator[Callable[[], bool]]:
    """spawn_worker with PROBE_ENV set, entered once the worker has called Probe.ready()."""
    collector.reset()
    with spawn_worker(argv, {**env, PROBE_ENV: collector.address}) as alive:
        collector.wait_ready(alive)
        yield alive


class _PeerSystem(JobSystem):
    """A peer whose worker node is this file run as `worker <name> <url>`."""

    def worker(self, url: str, collector: Collector) -> contextlib.AbstractContextManager[
            Callable[[], bool]]:
        argv = [sys.executable, str(Path(__file__).resolve()), "worker", self.name, url]
        return ready_worker(argv, {"PYTHONUNBUFFERED": "1"}, collector)


# ---------------------------------------------------------------- raw SQL ceiling

RAW_SCHEMA = """
CREATE TABLE raw_jobs (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    args jsonb,
    created_at timestamptz DEFAULT now()
);
CREATE INDEX raw_jobs_pending ON raw_jobs (id) WHERE status = 'pending';
"""
RAW_INSERT_MANY = """
WITH ins AS (
    INSERT INTO raw_jobs (args)
    SELECT jsonb_build_object('k', k) FROM unnest(%s::bigint[]) AS k
    RETURNING 1
) SELECT pg_notify('raw_jobs', '')
"""
RAW_INSERT_ONE = """
WITH ins AS (
    INSERT INTO raw_jobs (args) VALUES (jsonb_build_object('k', %s::bigint)) RETURNING 1
) SELECT pg_notify('raw_jobs', '')
"""
RAW_CLAIM = """
WITH c AS (
    SELECT id FROM raw_jobs WHERE status = 'pending' ORDER BY id LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE raw_jobs SET status = 'running' FROM c WHERE raw_jobs.id = c.id
RETURNING raw_jobs.id, raw_jobs.args
"""
RAW_DONE = "UPDATE raw_jobs SET status = 'done' WHERE id = ANY(%s)"


class RawClient(JobClient):
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def enqueue_txn(self, keys: list[int]) -> None:
        with self.conn.transaction():
            self.conn.execute(RAW_INSERT_MANY, (keys,))

    def enqueue_one(self, key: int) -> float:
        self.conn.execute(RAW_INSERT_ONE, (key,))
        return time.time()

    def enqueue_batches(self, keys: list[int], batch: int) -> None:
        for i in range(0, len(keys), batch):
            self.conn.execute(RAW_INSERT_MANY, (keys[i:i + batch],))

    def remaining(self) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM raw_jobs WHERE status <> 'done'").fetchone()[0]


class RawSystem(_PeerSystem):
    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.name = f"raw{batch}"

    def install(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RAW_SCHEMA)

    @contextlib.contextmanager
    def client(self, url: str) -> Iterator[JobClient]:
        with psycopg.connect(url, autocommit=True) as conn:
            yield RawClient(conn)


def raw_worker(url: str, batch: int) -> None:
    probe = Probe.from_env()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN raw_jobs")
        probe.ready()
        while True:
            rows = conn.execute(RAW_CLAIM, (batch,)).fetchall()
            if not rows:
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                continue
            for _id, args in rows:
                probe.hit(args["k"])  # the no-op job
            conn.execute(RAW_DONE, ([row[0] for row in rows],))


# ---------------------------------------------------------------- asyncio-based peers


class _AsyncClient(JobClient):
    """A JobClient whose system is asyncio-only: one event loop kept for its lifetime."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def close(self) -> None:
        self.runner.close()


# ---------------------------------------------------------------- pgqueuer

PGQUEUER_BATCH = 10


class PgQueuerClient(_AsyncClient):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.conn, self.queries = self.run(self._open(url))

    @staticmethod
    async def _open(url: str) -> tuple[Any, Any]:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries
        conn = await asyncpg.connect(url)
        return conn, Queries(AsyncpgDriver(conn))

    async def _enqueue(self, keys: list[int]) -> None:
        await self.queries.enqueue([NOOP] * len(keys), [str(k).encode() for k in keys],
                                   [0] * len(keys))

    def enqueue_txn(self, keys: list[int]) -> None:
        async def txn() -> None:
            async with self.conn.transaction():
                await self._enqueue(keys)
        self.run(txn())

    def enqueue_one(self, key: int) -> float:
        async def one() -> float:
            await self.queries.enqueue(NOOP, str(key).encode())
            return time.time()
        return self.run(one())

    def enqueue_batches(self, keys: list[int], batch: int) -> None:
        async def batches() -> None:
            for i in range(0, len(keys), batch):
                await self._enqueue(keys[i:i + batch])
        self.run(batches())

    def remaining(self) -> int:
        return self.run(self.conn.fetchval("SELECT count(*) FROM pgqueuer"))

    def close(self) -> None:
        self.run(self.conn.close())
        super().close()


class PgQueuerSystem(_PeerSystem):
    name = "pgqueuer"

    def install(self, url: str) -> None:
        async def install() -> None:
            conn, queries = await PgQueuerClient._open(url)
            try:
                await queries.install()
            finally:
                await conn.close()
        asyncio.run(install())

    def client(self, url: str) -> contextlib.AbstractContextManager[JobClient]:
        return contextlib.closing(PgQueuerClient(url))


async def pgqueuer_worker(url: str) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    probe = Probe.from_env()

    class Driver(AsyncpgDriver):
        async def add_listener(self, *args: Any) -> None:
            await super().add_listener(*args)  # the QueueManager's LISTEN
            probe.ready()

    qm = QueueManager(Queries(Driver(await asyncpg.connect(url))))

    @qm.entrypoint(NOOP)
    async def noop(job: Any) -> None:
        probe.hit(int(job.payload))

    await qm.run(batch_size=PGQUEUER_BATCH)


# ---------------------------------------------------------------- procrastinate

PROCRASTINATE_CONCURRENCY = 10


def _procrastinate_app(url: str, on_listen: Callable[[], None] | None = None) -> Any:
    import procrastinate

    class Connector(procrastinate.PsycopgConnector):
        async def _loop_notify(self, *args: Any, **kwargs: Any) -> None:
            if on_listen:  # LISTEN done; its notification loop starts
                on_listen()
            await super()._loop_notify(*args, **kwargs)

    return procrastinate.App(connector=Connector(conninfo=url))


class ProcrastinateClient(_AsyncClient):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.app = _procrastinate_app(url)
        self.run(self.app.connector.open_async())
        self.deferrer = self.app.configure_task(NOOP)
        self.conn = psycopg.connect(url, autocommit=True)

    def enqueue_txn(self, keys: list[int]) -> None:
        # one INSERT statement (procrastinate_defer_jobs_v1), so one transaction
        self.run(self.deferrer.batch_defer_async(*({"k": k} for k in keys)))

    def enqueue_one(self, key: int) -> float:
        async def one() -> float:
            await self.deferrer.defer_async(k=key)
            return time.time()
        return self.run(one())

    def enqueue_batches(self, keys: list[int], batch: int) -> None:
        async def batches() -> None:
            for i in range(0, len(keys), batch):
                await self.deferrer.batch_defer_async(*({"k": k} for k in keys[i:i + batch]))
        self.run(batches())

    def remaining(self) -> int:
        return self.conn.execute("SELECT count(*) FROM procrastinate_jobs"
                                 " WHERE status IN ('todo', 'doing')").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
        self.run(self.app.close_async())
        super().close()


class ProcrastinateSystem(_PeerSystem):
    name = "procrastinate"

    def install(self, url: str) -> None:
        from procrastinate.schema import SchemaManager
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SchemaManager.get_schema())

    def client(self, url: str) -> contextlib.AbstractContextManager[JobClient]:
        return contextlib.closing(ProcrastinateClient(url))


async def procrastinate_worker(url: str) -> None:
    probe = Probe.from_env()
    app = _procrastinate_app(url, on_listen=probe.ready)

    @app.task(name=NOOP)
    async def noop(k: int) -> None:
        probe.hit(k)

    async with app.open_async():
        await app.run_worker_async(concurrency=PROCRASTINATE_CONCURRENCY)


PEERS: dict[str, Callable[[], JobSystem]] = {
    "raw10": lambda: RawSystem(10),
    "raw100": lambda: RawSystem(100),
    "pgqueuer": PgQueuerSystem,
    "procrastinate": ProcrastinateSystem,
}


# ---------------------------------------------------------------- the measurements


def measure_enqueue(client: JobClient, jobs: int, batch: int) -> float:
    """Jobs/s enqueuing `jobs` jobs in transactions of `batch` (no worker running)."""
    started = time.perf_counter()
    client.enqueue_batches(list(range(jobs)), batch)
    return jobs / (time.perf_counter() - started)


def warm_up(client: JobClient, collector: Collector, alive: Callable[[], bool],
            jobs: int) -> None:
    """Wait for the worker to run `jobs` jobs, and for them to complete."""
    collector.reset()
    client.enqueue_txn(list(range(-jobs, 0)))
    collector.wait(jobs, timeout=120, alive=alive)
    wait_completed(client)


def measure_throughput(client: JobClient, collector: Collector, alive: Callable[[], bool],
                       cpu: PostgresCpu, jobs: int) -> tuple[float, float | None]:
    """Worker up; `jobs` jobs committed in one transaction; timed from that commit until all
    completed. Jobs/s, and PostgreSQL CPU ms per job over the same window."""
    collector.reset()
    client.enqueue_txn(list(range(jobs)))
    started = time.perf_counter()
    cpu.start()
    collector.wait(jobs, timeout=max(120.0, jobs / 50), alive=alive)
    wait_completed(client)
    elapsed = time.perf_counter() - started
    cpu_secs = cpu.stop()
    return jobs / elapsed, None if cpu_secs is None else cpu_secs * 1000 / jobs


def wait_completed(client: JobClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.remaining():
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still not completed after {timeout} s")
        time.sleep(0.005)


def measure_pickup(client: JobClient, collector: Collector, alive: Callable[[], bool],
                   rate: float, secs: float) -> tuple[float, float]:
    """Single jobs enqueued at `rate` per second for `secs`; p50 and p99 in ms from each
    job's enqueue commit to its handler's start."""
    collector.reset()
    count = max(2, round(rate * secs))
    committed: dict[int, float] = {}
    begin = time.perf_counter()
    for i in range(count):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        committed[PICKUP_KEYS + i] = client.enqueue_one(PICKUP_KEYS + i)
    starts = collector.wait(count, timeout=120, alive=alive)
    latencies = [(starts[key] - at) * 1000 for key, at in committed.items()]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


# ---------------------------------------------------------------- worker entry point


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] != "worker" or argv[1] not in PEERS:
        sys.exit(f"usage: jobs_peers.py worker {{{','.join(PEERS)}}} DATABASE_URL")
    kind, url = argv[1], argv[2]
    if kind.startswith("raw"):
        raw_worker(url, int(kind.removeprefix("raw")))
    elif kind == "pgqueuer":
        import uvloop  # a pgqueuer dependency; `pgq run` runs on it too
        uvloop.run(pgqueuer_worker(url))
    else:
        asyncio.run(procrastinate_worker(url))


if __name__ == "__main__":
    main(sys.argv[1:])
