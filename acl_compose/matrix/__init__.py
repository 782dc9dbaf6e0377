"""matrix: a MATRIX.yaml of images x firmwares x platforms x Ignition configs x suites ->
one Dask task per cell on a local, SSH or existing cluster -> a results directory.

`spec` reads the YAML and expands the cells, `cluster` connects to Dask, `runner` submits
cells and retries infrastructure failures (journal for --resume), `worker` is the task (image
verified on the worker, boot + tests in a child process, timeout enforced there), `images`
resolves image references by content, `console` runs suites over a serial agent for tiny
guests, `results` writes the merged JUnit and summary, `compare` diffs two runs.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "spec": ["Cell", "Matrix", "load_matrix"],
        "cluster": ["SshOptions", "check_spec"],
        "runner": ["RunOptions", "run_matrix"],
        "results": ["summary_lines"],
        "compare": ["compare_runs", "report_lines"],
    },
)
