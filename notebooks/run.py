"""Execute numbered notebooks in place, as they are committed: `python notebooks/run.py notebooks/02_*.ipynb ...`.

Progress bars are switched off (tqdm, datasets, transformers) so that the saved outputs hold results, not bars;
RAFTUNE_OVERRIDES (e.g. `runs_dir=/tmp/nb`) reaches the notebooks' parameter cells as in the tests.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main() -> None:
    os.environ.update({"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_VERBOSITY": "error"})
    for path in map(Path, sys.argv[1:]):
        started = time.time()
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=7200, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        for cell in notebook.cells:  # a bar that slipped through (a library that ignores TQDM_DISABLE)
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and "\r" in o.text)]
        nbformat.write(notebook, path)
        print(f"{path}: executed in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
