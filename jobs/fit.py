"""`ray job submit ... -- python jobs/fit.py --extract F --labels L --task T -o DIR`: fit a clip model.

The same options as `emotibatch fit` (see its --help). Inside a Ray job, Ray sets RAY_ADDRESS and the
aggregation of an extract output runs on that cluster; the classifier folder (-o) is written on the node
running this script (the head, under `ray job submit`).
"""

import sys

from emotibatch.cli import cli

if __name__ == "__main__":
    cli(["fit", *sys.argv[1:]], prog_name="jobs/fit.py")
