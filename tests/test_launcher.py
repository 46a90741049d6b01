"""The launcher and the stub set-up work: a real tritonserver from the wheel serves Python-backend models."""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tritonserver_fixture import start_tritonserver

from triton_adapters import launcher

ADD_SUB_CONFIG = """
backend: "python"
max_batch_size: 0
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "ENV_INFO" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

ADD_SUB_MODEL = """
import importlib.util, json, os, sys
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        # What the stub's interpreter sees: the venv (numpy<2, our editable install) and our env vars.
        info = json.dumps({"prefix": sys.prefix, "numpy": np.__version__,
                           "adapters": importlib.util.find_spec("triton_adapters") is not None,
                           "model_path": os.environ.get("MLLM_MODEL_PATH")})
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (a + b).astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32)),
                pb_utils.Tensor("ENV_INFO", np.array([info.encode()], dtype=np.object_)),
            ]))
        return responses
"""

STREAMER_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

STREAMER_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
            sender = request.get_response_sender()
            for i in range(3):
                chunk = np.array([text.decode() + f" {i}"], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", chunk)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def write_model(repo: Path, name: str, config: str, model_py: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\n' + textwrap.dedent(config))
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(model_py))


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    write_model(repo, "add_sub", ADD_SUB_CONFIG, ADD_SUB_MODEL)
    write_model(repo, "streamer", STREAMER_CONFIG, STREAMER_MODEL)
    return repo


@pytest.fixture(scope="module")
def server(model_repo):
    with start_tritonserver(model_repo, env={"MLLM_MODEL_PATH": "/models/sentinel"}) as server:
        yield server


def test_build_command_extra_args_override_defaults(tmp_path):
    argv, env = launcher.build_command(tmp_path, ["--log-verbose=1", "--strict-readiness", "false"],
                                       cache_dir=tmp_path / "cache")
    assert argv.count("--log-verbose=1") == 1 and "--log-verbose=0" not in argv
    assert not any(a.startswith("--strict-readiness=") for a in argv)
    assert argv[-2:] == ["--strict-readiness", "false"]
    assert f"--model-repository={tmp_path.resolve()}" in argv
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert str(launcher.REPO_ROOT / "backends") in env["PYTHONPATH"].split(os.pathsep)


def test_prepare_backend_dir_is_idempotent(tmp_path):
    first = launcher.prepare_backend_dir(tmp_path)
    assert launcher.prepare_backend_dir(tmp_path) == first
    stub = first / "python" / launcher.STUB_NAME
    assert stub.is_file() and os.access(stub, os.X_OK)
    assert (first / "python" / "libtriton_python.so").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folders left behind


def test_check_install_finds_every_library():
    assert launcher.check_install() == []


@pytest.mark.e2e
def test_http_infer_runs_in_the_venv(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_address)
    assert client.is_server_ready() and client.is_model_ready("add_sub")
    a, b = np.arange(4, dtype=np.float32), np.full(4, 2.0, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    info = json.loads(result.as_numpy("ENV_INFO")[0])
    assert info == {"prefix": sys.prefix, "numpy": np.__version__, "adapters": True,
                    "model_path": "/models/sentinel"}


@pytest.mark.e2e
def test_grpc_stream_decoupled(server):
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
        client.async_stream_infer("streamer", [text], request_id="r1", enable_empty_final_response=True)
        chunks, final = [], False
        while not final:
            result, error = responses.get(timeout=30)
            assert error is None, error
            final = result.get_response().parameters["triton_final_response"].bool_param
            if result.as_numpy("text_output") is not None:
                chunks.append(result.as_numpy("text_output")[0].decode())
    finally:
        client.stop_stream()
    assert chunks == ["hello 0", "hello 1", "hello 2"]


@pytest.mark.e2e
def test_generate_stream_sse(server):
    request = urllib.request.Request(f"{server.http_url}/v2/models/streamer/generate_stream",
                                     data=json.dumps({"text_input": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line[len(b"data: "):] for line in resp if line.startswith(b"data: ")]
    chunks = [json.loads(event)["text_output"] for event in events]
    assert chunks == ["hi 0", "hi 1", "hi 2"]


@pytest.mark.e2e
def test_stop_leaves_no_process(model_repo, tmp_path):
    model_repo = Path(shutil.copytree(model_repo, tmp_path / "stop_repo"))  # not the module server's
    with start_tritonserver(model_repo) as server:
        assert server.is_ready()
        pid = server.pid
    assert not server.is_ready()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the server nor its Python stubs are left in its process group
    deadline = time.monotonic() + 10
    while any(str(model_repo) in _cmdline(p) for p in Path("/proc").glob("[0-9]*")):
        assert time.monotonic() < deadline, "a Python backend stub outlived the server"
        time.sleep(0.2)


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_free_ports_are_distinct():
    # One probe socket at a time can return the same port twice; CI saw gRPC and metrics share one.
    for _ in range(50):
        ports = launcher.free_ports(3)
        assert len(set(ports)) == 3


@pytest.mark.e2e
def test_a_port_taken_before_the_server_binds_it_gets_new_ports(model_repo, tmp_path, monkeypatch):
    import socket

    with socket.socket() as squatter:  # takes the port the server was given, as another process could
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([[taken, *launcher.free_ports(2)]])
        real_free_ports = launcher.free_ports
        monkeypatch.setattr(launcher, "free_ports", lambda n, host: next(picks, None) or real_free_ports(n, host))
        model_repo = Path(shutil.copytree(model_repo, tmp_path / "race_repo"))
        with start_tritonserver(model_repo) as server:
            assert server.http_port != taken
            assert server.is_ready()
        assert "already in use" in server.log_path.read_text().lower()
