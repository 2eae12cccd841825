"""Starting JAX's multi-controller runtime on every host, with bounded waits and clear errors.

Where the cluster comes from, first match wins:
  explicit    coordinator_address / num_processes / process_id (flags, or the environment
              variables BERT_JAX_COORDINATOR_ADDRESS, BERT_JAX_NUM_PROCESSES, BERT_JAX_PROCESS_ID,
              which launch/local.py sets);
  slurm       SLURM_PROCID, SLURM_NTASKS and SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST): the
              coordinator is the first node, on BERT_JAX_COORDINATOR_PORT or a port from the job id;
  tpu         a Cloud TPU VM: JAX finds the workers from the TPU metadata by itself;
  single      none of these: one process, nothing to start.

Before JAX's own handshake (which aborts the process with an opaque DEADLINE_EXCEEDED when a host
is missing), every process checks in with process 0 over a plain TCP "roll call" on the
coordinator port. A host that never joins is then named in the error, within the timeout.
"""

import dataclasses
import os
import re
import socket
import time

import jax
from absl import logging

ENV_ADDRESS = "BERT_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "BERT_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "BERT_JAX_PROCESS_ID"
ENV_PORT = "BERT_JAX_COORDINATOR_PORT"
ENV_TIMEOUT = "BERT_JAX_INIT_TIMEOUT"
# How long a finished process waits at exit for the others; a crashed peer costs this much.
ENV_SHUTDOWN_TIMEOUT = "BERT_JAX_SHUTDOWN_TIMEOUT"
DEFAULT_TIMEOUT_S = 300


class ClusterStartError(RuntimeError):
    """A multi-process run could not start: bad settings, or a host that did not join."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    source: str  # explicit | slurm | tpu | single
    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None


def _env_int(environ, name):
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ClusterStartError(f"{name}={value!r} is not an integer") from None


def first_slurm_node(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003',
    'rack[1-2]-node[01-04]-ib' -> 'rack1-node01-ib' (every bracket at its first value)."""
    match = re.match(r"(?:[^,\[\]]|\[[^\]]+\])+", nodelist.strip())  # up to a top-level comma
    if not match:
        raise ClusterStartError(f"cannot read the SLURM node list {nodelist!r}")
    return re.sub(r"\[([^\]]+)\]", lambda group: group.group(1).split(",")[0].split("-")[0],
                  match.group(0))


def _on_tpu_vm(environ) -> bool:
    if environ.get("TPU_WORKER_HOSTNAMES") or environ.get("TPU_ACCELERATOR_TYPE"):
        return True
    return os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio/0")


def detect(coordinator_address: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, environ=None) -> ClusterSpec:
    """The cluster this process belongs to (see the module docstring for the order)."""
    environ = os.environ if environ is None else environ
    coordinator_address = coordinator_address or environ.get(ENV_ADDRESS) or None
    num_processes = num_processes if num_processes is not None else _env_int(
        environ, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(environ, ENV_PROCESS_ID)
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = sorted(k for k, v in given.items() if v is None)
        if missing and not (num_processes == 1 and coordinator_address is None):
            raise ClusterStartError(
                f"explicit multi-process start needs coordinator_address, num_processes and "
                f"process_id together; missing: {', '.join(missing)}")
        return _checked(ClusterSpec("explicit", num_processes, process_id or 0,
                                    coordinator_address))
    if "SLURM_PROCID" in environ and _env_int(environ, "SLURM_NTASKS") is not None:
        return _checked(_from_slurm(environ))
    if _on_tpu_vm(environ):
        return ClusterSpec("tpu")
    return ClusterSpec("single")


def _from_slurm(environ) -> ClusterSpec:
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ClusterStartError("SLURM_PROCID is set but neither SLURM_STEP_NODELIST nor "
                                "SLURM_JOB_NODELIST is: start the job's tasks with srun")
    port = _env_int(environ, ENV_PORT)
    if port is None:  # distinct jobs sharing a node should not share a port
        port = 20000 + (_env_int(environ, "SLURM_JOB_ID") or 0) % 10000
    return ClusterSpec("slurm", _env_int(environ, "SLURM_NTASKS"),
                       _env_int(environ, "SLURM_PROCID"), f"{first_slurm_node(nodelist)}:{port}")


def _checked(spec: ClusterSpec) -> ClusterSpec:
    if spec.num_processes < 1:
        raise ClusterStartError(f"num_processes must be >= 1, got {spec.num_processes}")
    if not 0 <= spec.process_id < spec.num_processes:
        raise ClusterStartError(
            f"process_id {spec.process_id} is not in [0, {spec.num_processes})")
    if spec.num_processes > 1:
        _split_address(spec.coordinator_address)
    return spec


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = (address or "").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterStartError(f"coordinator address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# ----------------------------------------------------------------------------------------------
# Roll call: every process reports to process 0 before JAX's own handshake.


def roll_call(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
    """Returns once all processes have checked in; raises ClusterStartError naming who did not."""
    if num_processes == 1:
        return
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        _host_roll_call(address, num_processes, deadline, timeout_s)
    else:
        _join_roll_call(address, num_processes, process_id, deadline, timeout_s)


def _host_roll_call(address, num_processes, deadline, timeout_s):
    _, port = _split_address(address)
    joined: dict[int, socket.socket] = {}
    with socket.create_server(("", port), reuse_port=False) as server:
        server.settimeout(0.2)
        while len(joined) < num_processes - 1 and time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                pid, count = (int(x) for x in _read_line(conn).split())
            except (OSError, ValueError):
                conn.close()
                continue
            if count != num_processes or not 0 < pid < num_processes or pid in joined:
                _send(conn, f"refused process {pid} of {count}: expected one of 1..."
                            f"{num_processes - 1} of {num_processes}, once each")
                conn.close()
                continue
            joined[pid] = conn
        missing = [p for p in range(1, num_processes) if p not in joined]
        reply = "go" if not missing else "missing " + ",".join(map(str, missing))
        for conn in joined.values():
            _send(conn, reply)
        for conn in joined.values():  # let the clients close first: no TIME_WAIT on the port
            conn.settimeout(2.0)
            try:
                conn.recv(1)
            except OSError:
                pass
            conn.close()
    if missing:
        raise ClusterStartError(_missing_message(missing, num_processes, address, timeout_s))


def _join_roll_call(address, num_processes, process_id, deadline, timeout_s):
    host, port = _split_address(address)
    conn = None
    while conn is None:
        try:
            conn = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            if time.monotonic() >= deadline:
                raise ClusterStartError(
                    f"process {process_id} of {num_processes}: the coordinator (process 0) at "
                    f"{address} did not answer within {timeout_s:g} s; check that process 0 was "
                    f"started, that {host} resolves and port {port} is reachable") from None
            time.sleep(0.2)
    with conn:
        _send(conn, f"{process_id} {num_processes}")
        conn.settimeout(max(deadline - time.monotonic(), 0.0) + 5.0)
        try:
            reply = _read_line(conn)
        except OSError:
            reply = ""
    if reply == "go":
        return
    if reply.startswith("missing "):
        missing = [int(p) for p in reply.split()[1].split(",")]
        raise ClusterStartError(_missing_message(missing, num_processes, address, timeout_s))
    raise ClusterStartError(f"process {process_id} of {num_processes}: the coordinator at "
                            f"{address} answered {reply or 'nothing'!r} instead of starting")


def _missing_message(missing, num_processes, address, timeout_s) -> str:
    names = ", ".join(f"process {p}" for p in missing)
    return (f"{names} of {num_processes} did not join the coordinator at {address} within "
            f"{timeout_s:g} s; check that every host started the same command with its own "
            f"process id and can reach the coordinator")


def _send(conn, text: str) -> None:
    try:
        conn.sendall(text.encode() + b"\n")
    except OSError:
        pass


def _read_line(conn) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


# ----------------------------------------------------------------------------------------------


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float | None = None) -> ClusterSpec:
    """Starts the multi-controller runtime when this is a multi-process run; call before any jax
    computation. CPU processes talk through gloo collectives."""
    spec = detect(coordinator_address, num_processes, process_id)
    if timeout_s is None:
        timeout_s = _env_int(os.environ, ENV_TIMEOUT) or DEFAULT_TIMEOUT_S
    # Only the CPU client reads this; without it CPU processes cannot run collectives together.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec.source == "single" or (spec.source != "tpu" and spec.num_processes == 1):
        return spec
    timeouts = {"shutdown_timeout_seconds": _env_int(os.environ, ENV_SHUTDOWN_TIMEOUT) or 300}
    if spec.source == "tpu":
        logging.info("Cloud TPU VM: JAX finds the workers itself")
        jax.distributed.initialize(initialization_timeout=int(timeout_s), **timeouts)
    else:
        logging.info("process %d of %d (%s): coordinator %s", spec.process_id,
                     spec.num_processes, spec.source, spec.coordinator_address)
        start = time.monotonic()
        roll_call(spec.coordinator_address, spec.num_processes, spec.process_id, timeout_s)
        remaining = max(int(timeout_s - (time.monotonic() - start)), 30)
        jax.distributed.initialize(spec.coordinator_address, spec.num_processes,
                                   spec.process_id, initialization_timeout=remaining,
                                   **timeouts)
    logging.info("process %d of %d: %d local of %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return dataclasses.replace(spec, num_processes=jax.process_count(),
                               process_id=jax.process_index())


def define_flags():
    """The flags of an explicit multi-process start, for an entrypoint to define at import.

    Returns a function that starts the runtime from them (and from the environment, SLURM or
    the TPU VM when they are unset): what every entrypoint that trains calls first in main.
    """
    from absl import flags

    coordinator = flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0, for an explicit multi-process "
        "start.")
    num_processes = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
    process_id = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
    init_timeout = flags.DEFINE_integer(
        "init_timeout", None, "Seconds to wait for every process to join (default 300).")

    def initialize_from_flags() -> ClusterSpec:
        return initialize(coordinator.value, num_processes.value, process_id.value,
                          init_timeout.value)

    return initialize_from_flags
