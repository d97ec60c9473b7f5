"""One `serve` per home: a second one, started by mistake on the same folder, is refused before it touches
anything (its embedded Redis would share the first one's socket and append-only file), and the first goes on.
And `serve` stops as an operator stops it: Ctrl-C, twice if impatient."""

import os
import signal
import subprocess
import sys
import time

from node_harness import send, wait_for


def test_a_second_serve_on_the_same_home_is_refused_and_the_first_goes_on(phantom, destination, node_factory):
    node = node_factory(export={"default_destination": destination.address}, assess={"mc_samples": 0}).start()
    in_flight = node.home / "incoming" / "transfer-in-progress.dcm"  # what a second SCP would clear at start
    in_flight.write_bytes(b"DICM")
    second = subprocess.run([sys.executable, "-m", "contourqa.cli", "serve", "--config", str(node.home / "config.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines() == [
        f"contourqa: error: {node.home.resolve()}: another contourqa serve is running on this home; stop it first, "
        "or give this one another --home"]
    assert in_flight.exists()
    case = phantom / "case001"
    assert send(node.port, case / "image", case / "candidates" / "auto02.dcm").returncode == 0
    wait_for(lambda: len(destination.received()) == 1, 120, "the first node's SR")


# a second signal lands while the first one's handler runs: the handler of the first sends it, from inside
# the lock a threading.Event's set() holds (where `serve` once hung for good, its children left as zombies)
SECOND_SIGNAL_INSIDE_THE_FIRST = """
import os, signal, threading
from contourqa.daemon.node import _wait_for_signal
original = threading.Condition.notify_all
def notify_all_and_signal_again(self):
    threading.Condition.notify_all = original
    os.kill(os.getpid(), signal.SIGINT)
    original(self)
threading.Condition.notify_all = notify_all_and_signal_again
ticks = []
def tick():
    if not ticks:
        print("waiting", flush=True)
    ticks.append(1)
_wait_for_signal(tick, interval_s=0.2)
print("stopped", flush=True)
"""


def test_a_second_signal_while_the_first_is_handled_still_stops():
    process = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL_INSIDE_THE_FIRST], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "waiting"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0 and output.strip() == "stopped"


def test_ctrl_c_twice_stops_serve_and_every_process_it_started(node_factory):
    node = node_factory(assess={"mc_samples": 0}).start()
    group = os.getpgid(node.process.pid)
    os.killpg(group, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
    time.sleep(0.2)
    os.killpg(group, signal.SIGINT)
    assert node.process.wait(timeout=90) == 0, node.log_text()[-3000:]
    wait_for(lambda: not _alive(group), 30, "the workers to exit")
    assert "Traceback" not in node.log_text()
    # Redis, in a session of its own, missed the Ctrl-C: serve stopped it last, once the workers were done
    redis_log = (node.home / "redis" / "redis.log").read_text()
    assert "Received SIGTERM" in redis_log and "Received SIGINT" not in redis_log, redis_log[-2000:]
    assert not (node.home / "redis" / "redis.sock").exists()


def test_the_embedded_redis_dies_with_a_killed_serve(node_factory):
    # no orphan may keep the append-only file the next start opens
    node = node_factory(assess={"mc_samples": 0}).start()
    socket = node.home / "redis" / "redis.sock"
    assert socket.exists()
    node.process.kill()
    node.process.wait(timeout=30)
    try:
        wait_for(lambda: not socket.exists(), 30, "Redis to exit with its parent")
        assert "Received SIGTERM" in (node.home / "redis" / "redis.log").read_text()
    finally:  # the workers, orphaned in serve's group, are not this test's subject
        os.killpg(node.process.pid, signal.SIGKILL)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
