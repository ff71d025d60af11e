"""Run one child process and measure it: wall time, exit status, output and its own peak RSS (os.wait4).

os.wait4 returns the rusage of exactly the child it reaps, so every child's ru_maxrss is its own (RUSAGE_CHILDREN
would give the largest child so far). The child is polled rather than waited on, so a run that exceeds the RSS cap
or the timeout can be killed by its pid while it is still unreaped (its pid cannot have been reused).
"""
import collections
import os
import subprocess
import tempfile
import time

ChildResult = collections.namedtuple("ChildResult", "returncode stdout stderr seconds peak_rss_bytes killed")


def current_rss_bytes(pid):
    """VmRSS of a running process from /proc (None where there is no /proc or the process is gone)."""
    try:
        with open("/proc/{}/status".format(pid)) as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (IOError, OSError, ValueError):
        pass
    return None


def exit_code(status):
    """The returncode subprocess would report for a wait status (negative signal number when killed)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_measured(argv, env=None, cwd=None, timeout=None, rss_cap_bytes=None, poll_seconds=0.1):
    """Run argv to the end; ChildResult with the child's own ru_maxrss in bytes (Linux reports KiB).

    killed: None, or why the child was killed (its RSS passed rss_cap_bytes, or it ran longer than timeout s):
    a shared machine must not be pushed into swap or the OOM killer by a benchmark."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        killed, sent = None, False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = current_rss_bytes(proc.pid)
            if killed is None and rss_cap_bytes and rss is not None and rss > rss_cap_bytes:
                killed = "peak RSS above the cap of {:.1f} GB".format(rss_cap_bytes / 1e9)
            elif killed is None and timeout and time.perf_counter() - start > timeout:
                killed = "ran longer than {:.0f} s".format(timeout)
            if killed is not None and not sent:
                proc.kill()  # still unreaped: the pid is ours
                sent = True
            time.sleep(poll_seconds)
        seconds = time.perf_counter() - start
        proc.returncode = exit_code(status)  # reaped here: tell Popen, so it never waits on the pid again
        out.seek(0)
        err.seek(0)
        return ChildResult(proc.returncode, out.read().decode("utf-8", "replace"),
                           err.read().decode("utf-8", "replace"), seconds, usage.ru_maxrss * 1024, killed)
