"""``jupyter-localllm run`` under the signals that end jobs (issue 25, family 7): SIGTERM
(``timeout``, ``docker stop``, SLURM) and SIGHUP (a closed terminal) stop the batch like
Ctrl-C: the finished rows are written to OUTPUT and the exit code is 128 + the signal (143,
129). A SIGHUP ignored at the start (``nohup``) stays ignored. Each run is the real command in
a subprocess on the packaged default model, signalled once its progress bar shows a row done.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pandas as pd
import pytest
from test_cli_run import Stderr, cli, cli_env, command, counts, news

N_ROWS = 12


def start(tmp_path, preexec=None) -> tuple[subprocess.Popen, Stderr, tuple]:
    """A run of ``N_ROWS`` slow rows (one at a time), and its stderr reader."""
    texts = [f"Count from {i} to {i + 50}, one number per line." for i in range(N_ROWS)]
    source = news(tmp_path / "numbers.csv", texts)
    args = (source, "-o", tmp_path / "out.csv", "--n-seq-max", "1", "--max-tokens", "32")
    process = subprocess.Popen(
        command(*args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path),
        preexec_fn=preexec,
    )
    return process, Stderr(process), args


def wait_rows(process: subprocess.Popen, stderr: Stderr, rows: int) -> None:
    """Until the progress bar shows ``rows`` rows done (a guard against a hang, no timing)."""
    deadline = time.monotonic() + 300
    while stderr.rows_done(N_ROWS) < rows and process.poll() is None:
        assert time.monotonic() < deadline, stderr.text
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before the signal: {stderr.text}"


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"]
)
def test_a_stop_signal_writes_the_finished_rows(tmp_path, signum, code):
    # The command as a terminal, SLURM or `timeout` starts it: the signal not ignored (a suite
    # started under nohup would hand its SIGHUP-ignored state down to the child).
    process, stderr, args = start(tmp_path, preexec=lambda: signal.signal(signum, signal.SIG_DFL))
    wait_rows(process, stderr, 1)
    process.send_signal(signum)
    process.wait(timeout=300)
    message = stderr.finish()
    assert process.returncode == code, message
    assert "Traceback" not in message
    partial = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    n_done = int((partial["llm_output"] != "").sum())
    assert 1 <= n_done < N_ROWS
    assert f"Interrupted: wrote {n_done} of {N_ROWS} rows" in message
    assert (tmp_path / "out.csv.localllm.json").is_file()
    assert not list(tmp_path.glob(".out.csv.*"))  # no temporary file left behind

    again = cli(tmp_path, *args, "--max-tokens", "1")  # another recipe: every row again
    assert again.returncode == 0, again.stderr
    assert "was made with another --max-tokens" in again.stderr
    assert counts(again.stdout) == (N_ROWS, 0)


def test_nohup_keeps_sighup_ignored(tmp_path):
    def ignore_hangup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    process, stderr, _ = start(tmp_path, preexec=ignore_hangup)
    wait_rows(process, stderr, 1)
    process.send_signal(signal.SIGHUP)  # ignored: the run goes on
    done_then = stderr.rows_done(N_ROWS)
    wait_rows(process, stderr, done_then + 1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    assert process.returncode == 143, stderr.finish()
