import contextlib

import torch


def prompt_ids(tokenizer, text="The cat is"):
    return tokenizer(text, return_tensors="pt").input_ids


def rewrite(question, prefix, last):
    """A deterministic rewriting aligner: changes some sentences, lengthens or shortens others."""
    out = last.replace("wrong", "right").replace("The answer", "An answer is that it").replace("Dr. ", "Doctor ")
    out = out.replace("3.5 times larger", "big")
    return out


class RecordingAligner:
    """An aligner object (``correct(list)``) that rewrites like :func:`rewrite` and records each call's requests."""

    def __init__(self):
        self.batches = []

    def correct(self, requests):
        from transformers_stream_aligner import AlignmentRequest

        assert all(isinstance(r, AlignmentRequest) for r in requests)
        self.batches.append(list(requests))
        return [rewrite(r.question, r.prefix, r.last) for r in requests]


def assert_rewrite_exact(model, sequences, trace):
    """Every record: uncached greedy decoding from sequences[:start] gives original_ids, and
    corrected_ids stand at start. Records tile the generated part in order."""
    seq = sequences[0].tolist()
    assert trace, "no records"
    pos = trace[0].start
    for rec in trace:
        assert rec.start == pos, "records must tile the output"
        assert seq[rec.start : rec.start + len(rec.corrected_ids)] == rec.corrected_ids
        prefix = torch.tensor([seq[: rec.start]])
        redo = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=len(rec.original_ids),
                              do_sample=False, use_cache=False)  # fmt: skip  # a pad token the model wrote is attended
        assert redo[0, rec.start :].tolist() == rec.original_ids, f"record at {rec.start} not reproduced"
        pos += len(rec.corrected_ids)
    assert pos == len(seq)


def populate_hub_cache(src_dir, cache_dir, repo_id, *, repo_type="model", revision="0123456789abcdef0123456789abcdef01234567"):
    """Lay out ``src_dir``'s files as the Hub cache does (``<type>s--org--name/snapshots/<rev>``, ``refs/main``)."""
    org, name = repo_id.split("/")
    repo = cache_dir / f"{repo_type}s--{org}--{name}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in src_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


def free_port():
    """A port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(command, *, health_url, log_path, env=None, cwd=None, timeout=300):
    """Start ``command`` (a server) in its own process group, wait until ``health_url`` answers 200 (bounded by
    ``timeout`` seconds), yield, then stop it by its process id (SIGTERM, then SIGKILL)."""
    import os
    import signal
    import subprocess
    import time

    import httpx

    log = open(log_path, "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {open(log_path).read()[-3000:]}")
            try:
                if httpx.get(health_url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become healthy within {timeout} s")
            time.sleep(0.5)
        yield server
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        except ProcessLookupError:
            pass  # a test killed it already
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
        log.close()
