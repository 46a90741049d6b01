"""Find and start `tritonserver`: the NGC container's, or the one inside the `nvidia-pytriton` wheel.

The wheel ships tritonserver 2.51 plus the Python backend, but the backend directory has no stub:
stubs live per Python version in `python_backend_stubs/3.X/`. We copy the backend tree into a cache
folder, add the stub of the *running* Python, and point `--backend-directory` there (DESIGN.md 6).
Plain Python on purpose: no Triton imports, usable before anything else works.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
STUB_NAME = "triton_python_backend_stub"
PORT_FLAGS = ("--http-port", "--grpc-port", "--metrics-port")
PORT_RACE_RETRIES = 2
# How tritonserver says it could not bind a port (HTTP, gRPC, and its own same-port check).
PORT_IN_USE_SIGNS = ("already in use", "cannot listen to")


class TritonServerError(RuntimeError):
    """tritonserver could not be found, set up, or did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    server: Path                  # the tritonserver binary
    backends_dir: Path | None     # backend tree as installed (wheel: has no stub)
    stubs_dir: Path | None        # wheel only: python_backend_stubs/
    caches_dir: Path | None       # response-cache plugins (`local`)
    lib_dirs: tuple[Path, ...]    # prepended to LD_LIBRARY_PATH
    from_wheel: bool


def find_tritonserver() -> TritonInstall:
    """`tritonserver` on PATH (NGC container: used as is), else the one in the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        prefix = Path(on_path).resolve().parent.parent  # /opt/tritonserver/bin/.. in NGC images
        return TritonInstall(Path(on_path), _dir_or_none(prefix / "backends"), None,
                             _dir_or_none(prefix / "caches"), (), from_wheel=False)
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("no `tritonserver` on PATH and the nvidia-pytriton wheel is not installed "
                                "(run scripts/bootstrap.sh, or pip install nvidia-pytriton==0.7.0)")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    server = root / "bin" / "tritonserver"
    if not server.is_file():
        raise TritonServerError(f"nvidia-pytriton is installed but has no {server}")
    libs = root.parent.parent / "nvidia_pytriton.libs"  # auditwheel's folder next to the package
    return TritonInstall(server, root / "backends", root / "python_backend_stubs",
                         _dir_or_none(root / "caches"), tuple(p for p in [libs] if p.is_dir()),
                         from_wheel=True)


def default_cache_dir() -> Path:
    if os.environ.get("MLLM_TRITON_CACHE"):
        return Path(os.environ["MLLM_TRITON_CACHE"])
    if (REPO_ROOT / "pyproject.toml").is_file():  # source checkout / editable install
        return REPO_ROOT / ".triton"
    return Path.home() / ".cache" / "video-mllm-triton"


def prepare_backend_dir(cache_dir: Path, install: TritonInstall | None = None) -> Path:
    """Backend tree with the running Python's stub in `python/`; returns the `--backend-directory`.

    The folder name carries a fingerprint of the source files, so a new wheel or Python gets a fresh
    folder and an existing one is never modified. It is built under a temporary name and renamed into
    place: concurrent callers either win the rename or discard their copy.
    """
    install = install or find_tritonserver()
    if not install.from_wheel:
        raise TritonServerError(f"{install.server} is not from the wheel: use its own backend directory")
    stub = install.stubs_dir / PY_VERSION / STUB_NAME
    if not stub.is_file():
        have = sorted(p.name for p in install.stubs_dir.iterdir())
        raise TritonServerError(f"the wheel has no Python backend stub for Python {PY_VERSION} (has {have})")
    sources = [stub, *sorted(p for p in install.backends_dir.rglob("*") if p.is_file())]
    digest = hashlib.sha256(str(install.backends_dir.resolve()).encode())
    for path in sources:
        st = path.stat()
        digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    final = Path(cache_dir) / f"backends-py{PY_VERSION}-{digest.hexdigest()[:12]}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        shutil.copytree(install.backends_dir, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "python" / STUB_NAME)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():  # a failed copy, not a lost race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_command(model_repository: str | os.PathLike | None, extra_args=(), *,
                  install: TritonInstall | None = None, cache_dir: Path | None = None,
                  base_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """tritonserver argv and environment. A flag given in `extra_args` replaces our default for it."""
    install = install or find_tritonserver()
    defaults = {"--log-verbose": "0", "--strict-readiness": "true", "--exit-on-error": "true"}
    if model_repository is not None:
        defaults["--model-repository"] = str(Path(model_repository).resolve())
    if install.from_wheel:
        defaults["--backend-directory"] = str(prepare_backend_dir(cache_dir or default_cache_dir(), install))
    elif install.backends_dir:
        defaults["--backend-directory"] = str(install.backends_dir)
    if install.caches_dir:
        defaults["--cache-directory"] = str(install.caches_dir)
    if not _has_nvidia_gpu():  # no CUDA pinned pool to allocate, no DCGM to query
        defaults.update({"--pinned-memory-pool-byte-size": "0", "--allow-gpu-metrics": "false"})
    else:  # decoded frames travel between ensemble steps as GPU tensors: 1 GiB pool on GPU 0 (default 64 MiB)
        defaults["--cuda-memory-pool-byte-size"] = "0:1073741824"
    extra_args = list(extra_args)
    given = {a.split("=", 1)[0] for a in extra_args if a.startswith("--")}
    argv = [str(install.server)]
    argv += [f"{flag}={value}" for flag, value in defaults.items() if flag not in given]
    return argv + extra_args, _server_env(install, base_env)


def _server_env(install: TritonInstall, base_env: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)  # MLLM_MODEL_PATH etc. pass through as is
    # The stub embeds libpython: use the running interpreter's when it ships one, so stub and venv match.
    py_libdir = sysconfig.get_config_var("LIBDIR") or ""
    py_lib = Path(py_libdir, sysconfig.get_config_var("INSTSONAME") or "libpython.so")
    lib_dirs = [str(p) for p in install.lib_dirs] + ([py_libdir] if py_lib.is_file() else [])
    # The stub's embedded Python locates its prefix from `python3` on PATH: the venv's goes first, so
    # models import the venv's packages (numpy<2, torch, ...).
    bin_dirs = [str(Path(sys.executable).parent)]
    # The stub's interpreter ignores PYTHON* variables (sys.flags.ignore_environment == 1): models see
    # our packages through the venv's editable install. PYTHONPATH serves processes that models start.
    py_paths = [str(REPO_ROOT / "backends")]
    for key, front in (("LD_LIBRARY_PATH", lib_dirs), ("PATH", bin_dirs), ("PYTHONPATH", py_paths)):
        env[key] = os.pathsep.join(dict.fromkeys(front + [p for p in env.get(key, "").split(os.pathsep) if p]))
    return env


def check_install(install: TritonInstall | None = None, cache_dir: Path | None = None) -> list[str]:
    """Shared libraries that `ldd` cannot resolve for the server, the Python backend and its stub."""
    install = install or find_tritonserver()
    _, env = build_command(None, install=install, cache_dir=cache_dir)
    binaries = [install.server]
    if install.from_wheel:
        python_dir = prepare_backend_dir(cache_dir or default_cache_dir(), install) / "python"
        binaries += [python_dir / "libtriton_python.so", python_dir / STUB_NAME]
    missing = []
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], check=False, env=env, capture_output=True, text=True).stdout
        missing += [f"{binary.name}: {line.split()[0]}" for line in out.splitlines() if "not found" in line]
    return missing


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports.

    All sockets stay bound until every port is picked: a port is free again the moment its probe
    socket closes, so probing one at a time can hand the same port out twice (CI saw gRPC and
    metrics both on one port, and tritonserver refused to start).
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


class TritonServerProcess:
    """A tritonserver child process on free (or given) ports, logging to a file.

    `with TritonServerProcess(repo) as server:` starts it and waits until it is ready.
    """

    def __init__(self, model_repository, extra_args=(), *, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 host: str = "127.0.0.1", log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 180.0):
        if any(a.split("=", 1)[0] in PORT_FLAGS for a in extra_args):
            raise ValueError(f"pass ports as keyword arguments, not in extra_args: {PORT_FLAGS}")
        self.host = host
        self._given_ports = (http_port, grpc_port, metrics_port)
        self._model_repository, self._extra_args, self._extra_env = model_repository, tuple(extra_args), env
        self._pick_ports()
        self.ready_timeout_s = ready_timeout_s
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"tritonserver-{self.http_port}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None
        self._log_start = 0  # where this start's part of the log begins

    def _pick_ports(self) -> None:
        """Free ports where none was given, and the command line that uses them."""
        spare = iter(free_ports(3, self.host))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(spare) for p in self._given_ports)
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                 "--metrics-port": self.metrics_port}
        addresses = [f"--{kind}-address={self.host}" for kind in ("http", "grpc", "metrics")]
        self.argv, self.env = build_command(
            self._model_repository, [*(f"{k}={v}" for k, v in ports.items()), *addresses, *self._extra_args])
        self.env.update(self._extra_env or {})

    http_url = property(lambda self: f"http://{self.host}:{self.http_port}")
    http_address = property(lambda self: f"{self.host}:{self.http_port}")  # tritonclient.http's `url`
    grpc_url = property(lambda self: f"{self.host}:{self.grpc_port}")      # tritonclient.grpc's `url`
    metrics_url = property(lambda self: f"http://{self.host}:{self.metrics_port}/metrics")
    pid = property(lambda self: self._proc.pid if self._proc else None)

    def start(self) -> TritonServerProcess:
        if self._proc is not None:
            raise TritonServerError("already started")
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            # Own session: a terminal's Ctrl-C goes to the test runner, which then stops us cleanly;
            # stop() can signal the whole group (server + Python stubs) as a last resort.
            self._proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float | None = None) -> None:
        limit_s = self.ready_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit_s
        while not self.is_ready():
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise TritonServerError(f"tritonserver exited (code {code}) before it was ready\n"
                                        f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver not ready after {limit_s:.0f} s"
                                        f"\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, num_lines: int = 50) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = "".join(deque(f, maxlen=num_lines))
        except OSError as exc:
            lines = f"(cannot read log: {exc})\n"
        return f"--- last {num_lines} lines of {self.log_path} ---\n{lines}"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (graceful: in-flight requests finish), then SIGTERM, then SIGKILL to the group."""
        proc = self._proc
        if proc is None:
            return None
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0)):
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Stubs normally exit with the server; make sure nothing of ours is left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()

    def __enter__(self) -> Self:
        for attempt in range(PORT_RACE_RETRIES + 1):
            self.start()
            try:
                self.wait_ready()
                return self
            except TritonServerError:
                self.stop(timeout_s=5.0)
                # A free port can be taken by another process between our probe and the server's
                # bind; that is worth a new set of ports, not a failed run.
                if attempt == PORT_RACE_RETRIES or all(self._given_ports) or not self._lost_a_port_race():
                    raise
                self._proc = None
                self._pick_ports()
            except BaseException:
                self.stop(timeout_s=5.0)
                raise
        raise AssertionError("unreachable")

    def _lost_a_port_race(self) -> bool:
        """Whether this start's part of the log says a port was taken."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace").lower()
        except OSError:
            return False
        return any(sign in text for sign in PORT_IN_USE_SIGNS)

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _dir_or_none(path: Path) -> Path | None:
    return path if path.is_dir() else None


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="python -m triton_adapters.launcher", allow_abbrev=False,
        description="Run tritonserver in the foreground; unknown arguments (and any after `--`) go to it.")
    parser.add_argument("--model-repository", help="model repository folder")
    parser.add_argument("--cache-dir", type=Path, help="where the backend tree is prepared "
                        "(default: <repo>/.triton, or $MLLM_TRITON_CACHE)")
    parser.add_argument("--print-command", action="store_true", help="print argv and exit")
    parser.add_argument("--check", action="store_true", help="check shared libraries and exit")
    args, unknown = parser.parse_known_args(own)
    try:
        if args.check:
            missing = check_install(cache_dir=args.cache_dir)
            for line in missing:
                print(f"missing shared library: {line}", file=sys.stderr)
            return 1 if missing else 0
        if not args.model_repository and "--model-repository" not in {a.split("=")[0] for a in argv}:
            parser.error("--model-repository is required")
        argv, env = build_command(args.model_repository, unknown + passthrough, cache_dir=args.cache_dir)
    except TritonServerError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 1
    if args.print_command:
        print(shlex.join(argv))
        return 0
    print(f"launcher: exec {shlex.join(argv)}", file=sys.stderr, flush=True)
    os.execvpe(argv[0], argv, env)  # foreground: signals reach tritonserver directly


if __name__ == "__main__":
    sys.exit(main())
