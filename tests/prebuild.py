"""The suite's background builder: the guest image, then every kernel the suite boots, at idle priority.

Started by ``tests/conftest.py`` when a session runs tests that boot guests.  Under ``SCHED_IDLE`` it
takes only CPU that nothing else wants: on a 2-core machine the suite's guests leave about a third of it
idle (measured on tests/integration/test_kernel.py), and a cold first run has ~25 minutes of kernel
builds to fit in.  A test that needs a kernel still builds it itself if it comes first: builds in one
workspace serialise on its lock (a test waits for the builder's build of the kernel it needs), builds in
different workspaces overlap (a test's failing build in static's does not wait for the builder's dynamic),
and a build finished by either process is found by the other.
"""

from __future__ import annotations

import logging
import os
import sys

from lab import interrupt
from lab.image import build_image
from lab.interrupt import Interrupted
from lab.kernel import build_kernel

# The suite runs its tests in this order of their kernels (tests/conftest.py: pytest.mark.kernels), so the
# last kernel built should be the one fewest tests need: the tests that run after the builder has finished
# are all the machine has to do, and they rarely keep both cores busy.
SUITE_KERNELS = ("static", "dynamic", "throttle", "throttle-nopoll", "throttle-v2-debug", "throttle-v2-dynamic")


def main(names: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s prebuild: %(message)s")
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # inherited by make and every compiler
    # The lab's own stop handling: SIGTERM at the session's end stops the build in progress with its
    # process group (make and its compilers run in one of their own), as a stopped lab run does.
    with interrupt.handling_signals():
        try:
            build_image()
            logging.info("guest image ready")
            for name in names or SUITE_KERNELS:
                build_kernel(name)
                logging.info("kernel %s ready", name)
        except Interrupted as stop:
            logging.info("stopped (%s)", stop)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
