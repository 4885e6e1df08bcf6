"""The test-only wait points (``s3fuse/faults.py``) that tests rely on to order what
the daemon does: a hold on the event loop waits while its file exists, and only then."""

from __future__ import annotations

import trio

from s3fuse import faults


def test_a_hold_on_the_loop_waits_while_its_file_exists_and_lets_the_loop_run(
        tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setattr(faults, "_holds", {"bucket-work": str(hold)})
    passed: list[float] = []
    ticks = 0
    through = trio.Event()

    async def main() -> None:
        nonlocal ticks

        async def held() -> None:
            await faults.await_point("bucket-work")
            passed.append(trio.current_time())
            through.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(held)
            for _ in range(6):  # the loop goes on meanwhile
                await trio.sleep(0.05)
                ticks += 1
            assert not passed, "passed the hold while its file exists"
            hold.unlink()
            with trio.fail_after(5):
                await through.wait()
        await faults.await_point("another-point")  # (no hold there: returns at once)

    trio.run(main)
    assert ticks == 6 and len(passed) == 1
