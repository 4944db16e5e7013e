"""``python -m dask_datalog.cluster.cli``: the ``dask-datalog`` command."""

import sys

from dask_datalog.cluster.cli.main import main

sys.exit(main())
