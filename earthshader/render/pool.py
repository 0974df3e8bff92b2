"""A pool of sandboxed render workers with deadlines, restarts, recycling, batches and a cache.

Each worker is its own process (``python -m earthshader.render.worker``) holding one EGL context.
The pool never runs shader code itself: it sends sources, waits with deadlines, and reads small
results. A worker that misses a deadline, dies (Mesa's compiler can die of a SIGFPE) or grows past
the memory limit is killed and a fresh one takes its place; workers also retire after a number of
renders, so leaks inside the driver stay bounded.

Speed on a CPU (mode ``"mesa"``) comes from llvmpipe with two changes to its defaults, chosen by
measurement (bench/RESULTS.md): LLVM's optimisation passes are off (``GALLIVM_PERF=nopt``), which
halves the JIT time that dominates a shader drawn once; and up to ``batch_size`` shaders are
compiled into one program, so the JIT's fixed cost per program is shared, and drawn up to eight at
a time (one colour attachment each), since llvmpipe runs every branch of a program for every pixel.
Softpipe, Mesa's interpreter, lost on both our SDF scenes and loop-heavy shaders; it remains a mode.
Mesa's compiler and LLVM allocate and free small objects by the million: on Mesa the workers run with
jemalloc where it is installed (``libjemalloc2``): 18% less CPU a shader in one process, 1.08x the
shaders a second in the pool (bench/RESULTS.md).

A batch that fails as a whole is retried shader by shader, so one bad shader never costs the others
their result. On a GPU machine the workers use the GPU's EGL device of this process's local rank.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import sysconfig
import threading
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np

from earthshader.errors import ConfigError
from earthshader.glsl import MAX_OUTPUTS, check_source, has_loops, prepare
from earthshader.render.result import RenderResult

logger = logging.getLogger(__name__)

MESA_DRIVERS = ("softpipe", "llvmpipe")


def mesa_env(env: MutableMapping[str, str], driver: str) -> MutableMapping[str, str]:
    """Write into ``env`` (and return it) the settings a render worker on Mesa's ``driver`` runs with.

    ``bench/render_phases.py`` applies the same to its own process, so that it times what the pool runs.
    """
    env["GALLIUM_DRIVER"] = driver
    env["LIBGL_ALWAYS_SOFTWARE"] = "1"
    env["LP_NUM_THREADS"] = "0"  # the pool is the parallelism: one thread a worker
    # LLVM's optimisation passes double llvmpipe's JIT time and barely speed up the draws
    # of shaders drawn once (bench/RESULTS.md).
    env.setdefault("GALLIVM_PERF", "nopt")
    env["__EGL_VENDOR_LIBRARY_FILENAMES"] = env.get(
        "EARTHSHADER_MESA_EGL_VENDOR", "/usr/share/glvnd/egl_vendor.d/50_mesa.json"
    )
    if not os.path.exists(env["__EGL_VENDOR_LIBRARY_FILENAMES"]):
        del env["__EGL_VENDOR_LIBRARY_FILENAMES"]
    return env


def renderer_mismatch(driver: str, renderer: str) -> str | None:
    """Why a worker started for Mesa's ``driver`` must not render on the context it got (its
    ``GL_RENDERER``), or None. Without Mesa's EGL vendor file, EGL hands out whatever it has, a GPU's
    context say, and a mode asked for by name must not change silently."""
    if driver in MESA_DRIVERS and driver not in renderer.lower():
        return (
            f"render mode {driver!r}: EGL gave a {renderer!r} context, not Mesa's {driver}; install "
            "Mesa's EGL (Debian: libegl-mesa0) or set EARTHSHADER_MESA_EGL_VENDOR to its vendor file"
        )
    return None


def find_jemalloc() -> str | None:
    """The path of jemalloc's shared library where it is installed (Debian: ``libjemalloc2``), else None."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"] if multiarch else []
    for d in [*dirs, "/usr/lib64", "/usr/lib", "/usr/local/lib"]:
        path = os.path.join(d, "libjemalloc.so.2")
        if os.path.exists(path):
            return path
    return None


def worker_malloc(choice: str | None, mode: str) -> str | None:
    """The allocator library a render worker preloads (``LD_PRELOAD``), or None for the system's.

    ``choice``: ``"auto"`` (the default; also what ``EARTHSHADER_RENDER_MALLOC`` may say): jemalloc
    on Mesa where it is installed; ``"system"``: glibc's malloc; or the path of a library to preload.
    Mesa's GLSL compiler and LLVM spend a tenth of a shader's time in glibc's malloc and free;
    jemalloc took 18% off a worker's CPU time a shader alone, and gave the pool 1.08x the shaders a
    second (a median of four runs of bench/render.py; bench/RESULTS.md).
    """
    choice = choice or os.environ.get("EARTHSHADER_RENDER_MALLOC") or "auto"
    if choice == "system":
        return None
    if choice == "auto":
        return find_jemalloc() if mode in ("mesa", *MESA_DRIVERS) else None
    if not os.path.isfile(choice):
        raise ConfigError(
            f"render worker allocator {choice!r}: no such file (use auto, system or a library's path)"
        )
    return choice


def preload(env: MutableMapping[str, str], library: str) -> MutableMapping[str, str]:
    """Put ``library`` first in ``env``'s ``LD_PRELOAD``, keeping what was there; returns ``env``."""
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    return env


def detect_mode() -> str:
    """``"gpu"`` where an NVIDIA device is visible, else ``"mesa"`` (llvmpipe).

    ``EARTHSHADER_RENDER_MODE`` overrides: ``gpu``, ``mesa``, ``llvmpipe`` or ``softpipe``.
    """
    override = os.environ.get("EARTHSHADER_RENDER_MODE")
    if override:
        if override not in ("gpu", "mesa", *MESA_DRIVERS):
            raise ConfigError(
                f"EARTHSHADER_RENDER_MODE must be gpu, mesa, softpipe or llvmpipe, not {override!r}"
            )
        return override
    return "gpu" if os.path.exists("/dev/nvidiactl") else "mesa"


@dataclass
class PoolStats:
    """Counters a caller can read to see what the pool did."""

    requests: int = 0
    cache_hits: int = 0
    rejected: int = 0
    renders: int = 0
    spawned: int = 0
    killed: int = 0
    recycled: int = 0
    programs: int = 0  # GL programs drawn from: one a batch, more where a batch failed as a whole
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class _Worker:
    driver: str
    proc: subprocess.Popen
    conn_in: Connection  # worker -> pool
    conn_out: Connection  # pool -> worker
    ready: bool = False
    renderer: str = ""
    renders: int = 0
    started: float = field(default_factory=time.monotonic)
    rss_checked: float = 0.0  # when the pool last read its memory during a render

    def rss_due(self, now: float, every: float = 0.05) -> bool:
        """Whether to read the memory again: reading /proc on every message cost the pool ~0.25 ms a
        shader; a runaway allocation takes seconds to reach the limit."""
        if now - self.rss_checked < every:
            return False
        self.rss_checked = now
        return True

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0


@dataclass
class _Job:
    key: tuple[str, int, float]
    body: str  # prepared mainImage code (earthshader.glsl.prepare)
    driver: str
    alone: bool = False  # after a batch failed as a whole, retry in a batch of its own
    loops: bool = False  # has loops (prepare() guards them): batched in smaller batches


@dataclass
class _Batch:
    jobs: list[_Job]
    started: float
    deadline: float
    phase: str = "compile"  # compile -> draw
    to_draw: list[int] = field(default_factory=list)  # indices not drawn yet, in drawing order
    drawn: int = 0
    groups: list[list[int]] = field(default_factory=list)  # indices drawn together, in drawing order
    group: int = 0  # the group being drawn


class RenderPool:
    """Render Shadertoy sources in sandboxed worker processes.

    Args:
        workers: renders in flight at once (default: the number of CPU cores).
        compile_timeout: seconds allowed for compiling and linking a shader.
        draw_timeout: seconds allowed for one draw and its read-back (llvmpipe's JIT happens in a
            program's first draw). A draw renders up to ``outputs`` shaders of a batch at once; when
            it runs late, those shaders are retried one by one, so each is judged on its own time.
        max_renders_per_worker: a worker retires after this many renders.
        max_worker_mb: a worker whose resident memory passes this is killed (during a render) or
            retired (after it).
        cache_mb: results kept for identical (source, size, time); 0 turns the cache off.
        mode: ``"mesa"`` (= llvmpipe), ``"llvmpipe"``, ``"softpipe"`` (Mesa's interpreter), ``"gpu"``,
            or None to detect (:func:`detect_mode`).
        start_timeout: seconds a new worker may take to create its GL context.
        batch_size: most shaders compiled into one program. llvmpipe's JIT has a large fixed cost
            per program, so batches multiply its throughput; a failing batch is retried one by one.
        loop_batch_size: most shaders with loops compiled into one program. Such shaders spend their
            time drawing rather than compiling, vary widely in cost, and lose to smaller batches
            (bench/RESULTS.md); they are batched only with each other.
        dedupe: in a batch's program, compile once the helper functions that several shaders define
            identically (:func:`earthshader.glsl.combine`). None: on unless the environment sets
            ``EARTHSHADER_RENDER_DEDUPE=0``.
        outputs: most shaders of a batch drawn at once, one colour attachment each (at most
            :data:`earthshader.glsl.MAX_OUTPUTS`); 1 draws them one by one.
        malloc: the workers' allocator (:func:`worker_malloc`): ``"auto"`` (jemalloc on Mesa where
            installed), ``"system"``, or a library's path. None: ``EARTHSHADER_RENDER_MALLOC``, else auto.
    """

    def __init__(
        self,
        workers: int | None = None,
        compile_timeout: float = 5.0,
        draw_timeout: float = 5.0,
        max_renders_per_worker: int = 1000,
        max_worker_mb: int = 1536,
        cache_mb: int = 256,
        mode: str | None = None,
        start_timeout: float = 60.0,
        batch_size: int = 32,
        loop_batch_size: int = 8,
        dedupe: bool | None = None,
        outputs: int = MAX_OUTPUTS,
        malloc: str | None = None,
    ):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.compile_timeout = compile_timeout
        self.draw_timeout = draw_timeout
        self.max_renders_per_worker = max_renders_per_worker
        self.max_worker_bytes = max_worker_mb * 1024 * 1024
        self.cache_bytes = cache_mb * 1024 * 1024
        self.mode = mode or detect_mode()
        self.start_timeout = start_timeout
        self.batch_size = batch_size
        self.loop_batch_size = loop_batch_size
        if dedupe is None:
            dedupe = os.environ.get("EARTHSHADER_RENDER_DEDUPE", "1") != "0"
        self.dedupe = dedupe
        self.outputs = max(1, min(outputs, MAX_OUTPUTS))
        self.malloc = worker_malloc(malloc, self.mode)  # the library workers preload, None: the system's
        self.stats = PoolStats()
        self._idle: dict[str, list[_Worker]] = {}
        self._cache: OrderedDict[tuple[str, int, float], RenderResult] = OrderedDict()
        self._cache_used = 0
        self._lock = threading.Lock()  # one render_many at a time; workers are not shared
        self._closed = False

    # ----------------------------------------------------------------------------- public API
    def render(self, source: str, size: int = 128, time: float = 0.0) -> RenderResult:
        """Render one Shadertoy source; see :meth:`render_many`."""
        return self.render_many([source], size=size, time=time)[0]

    def render_many(self, sources: list[str], size: int = 128, time: float = 0.0) -> list[RenderResult]:
        """Render Shadertoy sources in parallel; identical sources are rendered once.

        Returns one :class:`RenderResult` per source, in order. Nothing a shader does raises here.
        """
        if size < 1 or size > 4096:
            raise ValueError(f"size must be in 1..4096, not {size}")
        time = float(time)
        with self._lock:
            if self._closed:
                raise RuntimeError("render pool is closed")
            self.stats.requests += len(sources)
            results: dict[tuple[str, int, float], RenderResult] = {}
            jobs: dict[tuple[str, int, float], _Job] = {}
            for source in sources:
                key = (source, size, time)
                if key in results or key in jobs:
                    continue
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    self.stats.cache_hits += 1
                    results[key] = cached
                    continue
                reason = check_source(source)
                if reason is not None:
                    self.stats.rejected += 1
                    results[key] = self._remember(key, RenderResult("rejected", reason, None, 0.0))
                    continue
                body = prepare(source)
                jobs[key] = _Job(key, body, self._driver_for(source), loops=has_loops(body))
            if jobs:
                for key, result in self._run(list(jobs.values())).items():
                    results[key] = self._remember(key, result)
            return [results[(s, size, time)] for s in sources]

    def close(self) -> None:
        """Stop every worker. The pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            for workers in self._idle.values():
                for w in workers:
                    self._stop(w)
            self._idle.clear()

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for tests and monitoring)."""
        return [w.proc.pid for ws in self._idle.values() for w in ws]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each idle worker, in MiB."""
        return [w.rss_bytes() / 2**20 for ws in self._idle.values() for w in ws]

    # ----------------------------------------------------------------------------- internals
    def _driver_for(self, source: str) -> str:
        return "llvmpipe" if self.mode == "mesa" else self.mode

    def _remember(self, key, result: RenderResult) -> RenderResult:
        self.stats.kinds[result.kind] = self.stats.kinds.get(result.kind, 0) + 1
        if self.cache_bytes <= 0:
            return result
        nbytes = result.image.nbytes if result.image is not None else 0
        self._cache[key] = result
        self._cache_used += nbytes + len(key[0])
        while self._cache_used > self.cache_bytes and self._cache:
            old_key, old = self._cache.popitem(last=False)
            self._cache_used -= (old.image.nbytes if old.image is not None else 0) + len(old_key[0])
        return result

    def _spawn(self, driver: str) -> _Worker:
        env = dict(os.environ)
        env.setdefault("MESA_SHADER_CACHE_DISABLE", "true")  # untrusted code: no disk cache
        env["OMP_NUM_THREADS"] = "1"
        env["EARTHSHADER_RENDER_DEDUPE"] = "1" if self.dedupe else "0"
        env["EARTHSHADER_RENDER_OUTPUTS"] = str(self.outputs)
        if driver in MESA_DRIVERS:
            mesa_env(env, driver)
        else:
            env["EARTHSHADER_EGL_DEVICE"] = os.environ.get("LOCAL_RANK", "0")
        if self.malloc:
            preload(env, self.malloc)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "earthshader.render.worker", str(to_worker_r), str(from_worker_w)],
            pass_fds=(to_worker_r, from_worker_w),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches the pool, not the workers
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        self.stats.spawned += 1
        return _Worker(
            driver, proc, Connection(from_worker_r, writable=False), Connection(to_worker_w, readable=False)
        )

    def _stop(self, w: _Worker, kill: bool = False) -> None:
        if not kill:
            try:
                w.conn_out.send(None)
            except OSError:
                kill = True
        if kill:
            w.proc.kill()
        for conn in (w.conn_in, w.conn_out):
            conn.close()
        try:
            w.proc.wait(timeout=0 if kill else 2)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()

    def _take_worker(self, driver: str) -> _Worker:
        idle = self._idle.setdefault(driver, [])
        return idle.pop() if idle else self._spawn(driver)

    def _release(self, w: _Worker) -> None:
        if w.renders >= self.max_renders_per_worker or w.rss_bytes() > self.max_worker_bytes:
            self.stats.recycled += 1
            self._stop(w)
        else:
            self._idle.setdefault(w.driver, []).append(w)

    def _next_batch(self, queue: list[_Job]) -> list[_Job]:
        """Take the next jobs to send together: same driver, with or without loops alike, at most
        ``batch_size`` (``loop_batch_size`` with loops), spread evenly."""
        first = queue.pop()
        size = self.loop_batch_size if first.loops else self.batch_size
        if first.alone or size <= 1:
            return [first]
        share = -(-(len(queue) + 1) // self.workers)  # ceil: keep every worker busy
        limit = max(1, min(size, share))
        batch = [first]
        for i in range(len(queue) - 1, -1, -1):
            if len(batch) >= limit:
                break
            job = queue[i]
            if job.driver == first.driver and job.loops == first.loops and not job.alone:
                batch.append(queue.pop(i))
        return batch

    def _compile_deadline(self, w: _Worker, n: int, now: float) -> float:
        budget = self.compile_timeout * (1 + (n - 1) / 4)
        return now + budget + (0 if w.ready else self.start_timeout)

    def _kill(self, w: _Worker) -> None:
        self.stats.killed += 1
        self._stop(w, kill=True)

    def _settle_failure(self, batch: _Batch, kind: str, message: str, now: float, queue, done) -> None:
        """A batch's worker died or missed a deadline: blame one job if we can, retry the rest.

        While compiling, or drawing the first group (llvmpipe JIT-compiles the whole batch then), the
        culprit is unknown: every job goes back alone. Later, a group of one being drawn is the
        culprit; the jobs of a bigger group go back alone, the jobs after it back to the queue.
        """
        order = batch.to_draw if batch.phase == "draw" else range(len(batch.jobs))
        pending = [i for i in order if batch.jobs[i].key not in done]
        if not pending:
            return
        if len(batch.jobs) > 1 and (batch.phase == "compile" or batch.drawn == 0):
            suspects = pending
        else:
            group = batch.groups[batch.group] if batch.phase == "draw" else pending
            suspects = [i for i in pending if i in group] or pending[:1]
            if len(group) == 1:
                culprit = batch.jobs[suspects[0]]
                done[culprit.key] = RenderResult(kind, message, None, now - batch.started)
                suspects = []
        for i in suspects:
            batch.jobs[i].alone = True
        queue.extend(reversed([batch.jobs[i] for i in pending if batch.jobs[i].key not in done]))

    def _run(self, jobs: list[_Job]) -> dict[tuple[str, int, float], RenderResult]:
        running: dict[int, tuple[_Worker, _Batch]] = {}  # keyed by the fd of conn_in
        try:
            return self._schedule(jobs, running)
        finally:  # interrupted (Ctrl-C, an error): workers still busy would be left behind
            for w, _ in running.values():
                self._kill(w)

    def _schedule(self, jobs: list[_Job], running: dict[int, tuple[_Worker, _Batch]]):
        queue = list(reversed(jobs))  # pop() from the end keeps the callers' order
        done: dict[tuple[str, int, float], RenderResult] = {}
        while queue or running:
            now = time.monotonic()
            while queue and len(running) < self.workers:
                jobs_now = self._next_batch(queue)
                w = self._take_worker(jobs_now[0].driver)
                batch = _Batch(jobs_now, now, self._compile_deadline(w, len(jobs_now), now))
                try:
                    w.conn_out.send(([j.body for j in jobs_now], jobs_now[0].key[1], jobs_now[0].key[2]))
                except OSError:  # died while idle: replace it and try again
                    self._kill(w)
                    queue.extend(reversed(jobs_now))
                    continue
                running[w.conn_in.fileno()] = (w, batch)

            next_deadline = min(batch.deadline for _, batch in running.values())
            timeout = max(0.0, min(next_deadline - time.monotonic(), 0.05))
            for conn in wait([w.conn_in for w, _ in running.values()], timeout=timeout):
                fd = conn.fileno()
                w, batch = running[fd]
                now = time.monotonic()
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    del running[fd]
                    try:
                        code = w.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        code = None
                    why = (
                        "stopped answering"
                        if code is None
                        else (f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
                    )
                    self._kill(w)
                    if not w.ready:
                        raise RuntimeError(f"render worker ({w.driver}) failed to start: it {why}") from None
                    self._settle_failure(
                        batch, "crash", f"render worker {why} ({batch.phase})", now, queue, done
                    )
                    continue
                tag = msg[0]
                if tag == "ready":
                    w.ready, w.renderer = True, msg[1]
                    wrong = renderer_mismatch(w.driver, w.renderer)
                    if wrong:
                        self._kill(w)
                        raise ConfigError(wrong)
                    batch.started = now
                    batch.deadline = self._compile_deadline(w, len(batch.jobs), now)
                elif tag == "compiled":
                    batch.phase = "draw"
                    _, batch.groups, programs = msg
                    self.stats.programs += programs
                    batch.to_draw = [
                        i for group in batch.groups for i in group if batch.jobs[i].key not in done
                    ]
                    # The first draw carries llvmpipe's JIT compilation of the whole program.
                    batch.deadline = now + self.draw_timeout + self.compile_timeout
                    if not batch.to_draw:  # nothing compiled
                        del running[fd]
                        self._release(w)
                elif tag == "done":
                    _, i, kind, message, payload = msg
                    job = batch.jobs[i]
                    image = None
                    if payload is not None:
                        size = job.key[1]
                        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(size, size, 3)
                        image = pixels.astype(np.float32) / np.float32(255.0)
                    seconds = now - batch.started
                    batch.started = now
                    done[job.key] = RenderResult(kind, message, image, seconds)
                    if batch.phase == "draw":
                        batch.to_draw.remove(i)
                        batch.drawn += 1
                        w.renders += 1
                        self.stats.renders += 1
                        while batch.group < len(batch.groups) and not any(
                            j in batch.to_draw for j in batch.groups[batch.group]
                        ):
                            batch.group += 1  # a group drawn: the next one has a deadline of its own
                            batch.deadline = now + self.draw_timeout
                        if not batch.to_draw:
                            del running[fd]
                            self._release(w)

            now = time.monotonic()
            for fd, (w, batch) in list(running.items()):
                if now > batch.deadline:
                    del running[fd]
                    self._kill(w)
                    if not w.ready:
                        raise RuntimeError(
                            f"render worker ({w.driver}) did not start within {self.start_timeout:.0f} s"
                        )
                    limit = self.compile_timeout if batch.phase == "compile" else self.draw_timeout
                    msg = f"{batch.phase} exceeded {limit:g} s"
                    self._settle_failure(batch, "timeout", msg, now, queue, done)
                elif w.rss_due(now) and (rss := w.rss_bytes()) > self.max_worker_bytes:
                    del running[fd]
                    mb = rss // 2**20
                    self._kill(w)
                    self._settle_failure(
                        batch, "crash", f"worker memory passed {mb} MiB ({batch.phase})", now, queue, done
                    )
        return done


_default_pool: RenderPool | None = None
_default_lock = threading.Lock()


def default_pool() -> RenderPool:
    """The process-wide pool used by :func:`render` and :func:`render_many`, created on first use."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._closed:
            workers = int(os.environ.get("EARTHSHADER_RENDER_WORKERS", "0")) or None
            _default_pool = RenderPool(workers=workers)
        return _default_pool


def set_default_pool(pool: RenderPool | None) -> None:
    """Replace the process-wide pool (closing the old one)."""
    global _default_pool
    with _default_lock:
        if _default_pool is not None and _default_pool is not pool:
            _default_pool.close()
        _default_pool = pool


@atexit.register
def _close_default_pool() -> None:
    if _default_pool is not None:
        _default_pool.close()
