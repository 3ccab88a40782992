"""`ray job submit ... -- python jobs/extract.py INPUT... --output OUT`: the extraction job.

The same options and exit codes as `emotibatch extract` (see its --help). Inside a Ray job, Ray sets
RAY_ADDRESS and the job runs on that cluster.
"""

import sys

from emotibatch.cli import cli

if __name__ == "__main__":
    cli(["extract", *sys.argv[1:]], prog_name="jobs/extract.py")
