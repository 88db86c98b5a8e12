"""Unit leases: two drivers on one storage never both hold a unit; a dead driver's lease expires."""

from __future__ import annotations

import json
import time

from pipeline.orchestration.lease import LEASE_FILE, LOCK_FILE, Leases


def test_one_holder_at_a_time(tmp_path):
    a, b = Leases(owner="a"), Leases(owner="b")
    unit = str(tmp_path / "unit")
    assert a.acquire(unit) and a.acquire(unit)  # holding it again is fine
    assert not b.acquire(unit)
    assert b.holder(unit)["owner"] == "a"
    a.release(unit)
    assert not (tmp_path / "unit" / LEASE_FILE).exists()
    assert b.acquire(unit) and not a.acquire(unit)


def test_a_lease_not_renewed_expires_and_is_taken_over(tmp_path):
    dead, alive = Leases(owner="dead", ttl_s=0.2), Leases(owner="alive", ttl_s=60)
    unit = str(tmp_path / "unit")
    assert dead.acquire(unit)
    assert not alive.acquire(unit)
    time.sleep(0.3)
    assert alive.holder(unit) is None  # expired
    assert alive.acquire(unit)
    assert json.loads((tmp_path / "unit" / LEASE_FILE).read_text())["owner"] == "alive"
    dead.release(unit)  # the old holder's release does not remove the new holder's lease
    assert alive.holder(unit)["owner"] == "alive"


def test_renewal_keeps_a_lease_alive_and_damage_frees_it(tmp_path):
    # renewed every half TTL for 1.5 TTLs: alive throughout (a TTL of seconds, so a loaded CI
    # machine's scheduling delays between renew and acquire cannot outlast it)
    a, b = Leases(owner="a", ttl_s=2.0), Leases(owner="b")
    unit = str(tmp_path / "unit")
    assert a.acquire(unit)
    for _ in range(3):
        time.sleep(1.0)
        a.renew()
        assert not b.acquire(unit)
    (tmp_path / "unit" / LEASE_FILE).write_text("{not json")
    assert b.acquire(unit)


def test_a_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # that process has exited
    dead = Leases(owner=f"{socket.gethostname()}:{dead_pid}:abcd1234", ttl_s=600)
    unit = str(tmp_path / "unit")
    assert dead.acquire(unit)
    other_host = Leases(owner=f"elsewhere-{socket.gethostname()}:{dead_pid}:abcd1234", ttl_s=600)
    me = Leases()
    assert me.holder(unit) is None  # its driver was killed: no TTL to wait out
    assert me.acquire(unit)
    # a live process of this host (this test) holds its lease for the whole TTL
    assert not Leases().acquire(unit)
    # a lease from another host cannot be checked, so it stands until it expires
    far = str(tmp_path / "far")
    assert other_host.acquire(far)
    assert not Leases().acquire(far)


def test_runs_packed_into_one_folder_each_hold_their_own_lease(tmp_path):
    a, b = Leases(owner="a"), Leases(owner="b")
    folder = str(tmp_path / "ind")
    assert a.acquire(folder, "ind-0_1") and a.acquire(folder, "ind-2_3")
    a.release(folder, "ind-0_1")  # the first packed run finished
    assert b.acquire(folder, "ind-0_1") is True  # (its tasks are done; the lease alone is free)
    assert not b.acquire(folder, "ind-2_3")  # the sibling still trains under a's lease
    assert b.holder(folder, "ind-2_3")["owner"] == "a"
    a.release_all()
    assert b.acquire(folder, "ind-2_3")
    assert sorted(p.name for p in (tmp_path / "ind").iterdir()) == [LOCK_FILE, "lease-ind-0_1.json",
                                                                     "lease-ind-2_3.json"]


def test_drivers_racing_for_an_expired_lease_leave_exactly_one_holder(tmp_path):
    # without the lock, two drivers that both read the expired lease could each delete and
    # create it, the second deleting the first's fresh lease: both would train the unit
    import threading

    for round_ in range(30):
        unit = str(tmp_path / f"unit{round_}")
        assert Leases(owner="dead", ttl_s=0.0).acquire(unit)  # expired at once
        drivers = [Leases(owner=f"d{i}") for i in range(6)]
        won, start = [], threading.Barrier(len(drivers))

        def race(d: Leases) -> None:
            start.wait()
            if d.acquire(unit):
                won.append(d.owner)

        threads = [threading.Thread(target=race, args=(d,)) for d in drivers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert Leases(owner="x").holder(unit)["owner"] == won[0]


def test_a_renewal_never_overwrites_a_lease_another_driver_took_over(tmp_path):
    late, other = Leases(owner="late", ttl_s=0.0), Leases(owner="other", ttl_s=60)
    unit = str(tmp_path / "unit")
    assert late.acquire(unit) and other.acquire(unit)  # late's lease expired at once
    late.renew()
    assert other.holder(unit)["owner"] == "other" and not late.held
