"""Start a real tritonserver for end-to-end tests (and benchmarks) through the project's launcher.

    from tritonserver_fixture import start_tritonserver

    @pytest.fixture(scope="session")
    def triton(tmp_path_factory):
        with start_tritonserver(REPO / "model_repository", env={"MLLM_MODEL_PATH": ...}) as server:
            yield server   # .http_url .http_address .grpc_url .metrics_url .log_path

The server runs on free ports bound to 127.0.0.1, logs to `<repo>/.triton/logs/` (kept after the run,
and its last lines are in the error when it fails to start) and is stopped on exit, Python stubs included.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from triton_adapters.launcher import REPO_ROOT, TritonServerProcess

LOG_DIR = REPO_ROOT / ".triton" / "logs"


@contextlib.contextmanager
def start_tritonserver(model_repository: str | os.PathLike, extra_args: Sequence[str] = (),
                       env: dict[str, str] | None = None, *, ready_timeout_s: float = 180.0,
                       log_dir: str | os.PathLike = LOG_DIR) -> Iterator[TritonServerProcess]:
    """A ready tritonserver serving `model_repository`; `env` is added to the inherited environment."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    fd, log_path = tempfile.mkstemp(prefix=f"tritonserver-{Path(model_repository).name}-", suffix=".log",
                                    dir=log_dir)
    os.close(fd)
    server = TritonServerProcess(model_repository, extra_args, env=env, log_path=log_path,
                                 ready_timeout_s=ready_timeout_s)
    with server:
        yield server
