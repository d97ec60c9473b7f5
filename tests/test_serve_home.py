"""One `serve` per home: a second one, started by mistake on the same folder, is refused before it touches
anything (its embedded Redis would share the first one's socket and append-only file), and the first goes on."""

import subprocess
import sys

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
