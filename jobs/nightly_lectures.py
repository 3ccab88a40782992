"""`ray job submit ... -- python jobs/nightly_lectures.py PREFIX --output OUT`: the nightly lecture job.

The same options and exit codes as `emotibatch nightly` (see its --help).
"""

import sys

from emotibatch.cli import cli

if __name__ == "__main__":
    cli(["nightly", *sys.argv[1:]], prog_name="jobs/nightly_lectures.py")
