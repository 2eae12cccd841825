r"""N processes of one command on this machine, as N hosts of a multi-process JAX run (CPU).

    python -m bert_jax.tokenizer train --input=builtin --vocab_size=4000 --output=/tmp/demo_tok
    python launch/local.py --num_processes=2 --devices_per_process=4 -- \
        python -m bert_jax.pretrain --config=configs/pretrain.py:demo --workdir=/tmp/demo2 \
            --config.data.tokenizer=sentencepiece:/tmp/demo_tok.model

(Several processes need a tokenizer made beforehand: data.tokenizer=train is single-host.)

Every process runs the same command; only its environment differs (BERT_JAX_PROCESS_ID, read by
bert_jax.parallel.multihost). Output is streamed with a [process i] prefix. When one process
fails, the others are stopped, and the exit status is the first failure's (128 + N for a process
killed by signal N). SIGTERM, Ctrl-C or a closed terminal (SIGHUP) reaches every process as
SIGTERM, which bert_jax's entrypoints answer by saving at the next step and exiting; a second
one kills them. `--dry-run` prints the exact commands instead of running them.
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_envs(num_processes: int, devices_per_process: int, port: int,
                 init_timeout: int, xla_flags: str = "") -> list[dict]:
    """The environment variables of each process (added to this process's environment);
    `xla_flags`, this process's XLA_FLAGS, come before the device count."""
    device_count = f"--xla_force_host_platform_device_count={devices_per_process}"
    return [{
        "BERT_JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "BERT_JAX_NUM_PROCESSES": str(num_processes),
        "BERT_JAX_PROCESS_ID": str(i),
        "BERT_JAX_INIT_TIMEOUT": str(init_timeout),
        "BERT_JAX_SHUTDOWN_TIMEOUT": str(init_timeout),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{xla_flags} {device_count}".strip(),
        "PYTHONUNBUFFERED": "1",
    } for i in range(num_processes)]


def command_lines(envs: list[dict], command: list[str]) -> list[str]:
    return [shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *command]) for env in envs]


def _stream(index: int, pipe, out) -> None:
    for line in iter(pipe.readline, ""):
        out.write(f"[process {index}] {line}")
        out.flush()


def exit_status(code: int) -> int:
    """A child's return code as a shell reports it: 128 + N when signal N killed it."""
    return 128 - code if code < 0 else code


def run(envs: list[dict], command: list[str]) -> int:
    """Starts all processes, streams their output, and returns the first non-zero status."""
    procs, threads = [], []
    signals_received = []

    def forward(signum, frame):
        del frame
        signals_received.append(signum)
        # The first asks every process to save and stop; a second one does not wait for that.
        how = "SIGTERM sent to" if len(signals_received) == 1 else "killing"
        print(f"[launch] {signal.Signals(signum).name}: {how} every process", file=sys.stderr)
        for proc in procs:
            if proc.poll() is not None:
                continue
            if len(signals_received) == 1:
                proc.terminate()
            else:
                proc.kill()

    # SIGHUP too: the children, in their own session, no longer get a closed terminal's.
    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    for i, extra in enumerate(envs):
        # Their own session: a terminal's Ctrl-C reaches them only through `forward`, once.
        proc = subprocess.Popen(command, env=dict(os.environ, **extra), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        thread = threading.Thread(target=_stream, args=(i, proc.stdout, sys.stdout), daemon=True)
        thread.start()
        procs.append(proc)
        threads.append(thread)
    status = 0
    try:
        pending = set(range(len(procs)))
        while pending:
            for i in sorted(pending):
                try:
                    code = procs[i].wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                pending.discard(i)
                if code and not status:
                    status = exit_status(code)
                    print(f"[launch] process {i} exited with status {status}; stopping the "
                          "others", file=sys.stderr)
                    for j in pending:
                        procs[j].terminate()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for thread in threads:
            thread.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument("--init_timeout", type=int, default=120,
                        help="seconds to wait for every process to join")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the commands instead of running them")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    envs = process_envs(args.num_processes, args.devices_per_process,
                        args.port or free_port(), args.init_timeout,
                        os.environ.get("XLA_FLAGS", ""))
    if args.dry_run:
        print("\n".join(f"{line} &" for line in command_lines(envs, command)))
        print("wait")
        return 0
    return run(envs, command)


if __name__ == "__main__":
    sys.exit(main())
