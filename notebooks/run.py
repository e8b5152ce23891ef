"""Execute numbered notebooks in place, as they are committed: `python notebooks/run.py notebooks/02_*.ipynb ...`.

Progress bars are switched off (tqdm, datasets, transformers) so that the saved outputs hold results, not bars;
RAFTUNE_OVERRIDES (e.g. `runs_dir=/tmp/nb`) reaches the notebooks' parameter cells as in the tests.
`--strip` only removes progress-bar output from the notebooks as they are, without running them.
"""

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BAR = re.compile(r"\d+%\|.*\|")  # tqdm's "  42%|████      | 21/50 [00:03<00:04, 6.1it/s]"


def is_progress_bar(output) -> bool:
    if output.output_type != "stream" or output.name != "stderr":
        return False
    parts = [part for part in re.split(r"[\r\n]", output.text) if part.strip()]
    return bool(parts) and all(BAR.search(part) for part in parts)


def main() -> None:
    strip_only = "--strip" in sys.argv[1:]
    os.environ.update({"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_VERBOSITY": "error"})
    for path in (Path(p) for p in sys.argv[1:] if p != "--strip"):
        started = time.time()
        notebook = nbformat.read(path, as_version=4)
        if not strip_only:
            NotebookClient(notebook, timeout=7200, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        for cell in notebook.cells:  # bars from a library that ignores TQDM_DISABLE, or from an earlier run
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not is_progress_bar(o)]
        nbformat.write(notebook, path)
        print(f"{path}: {'progress bars removed' if strip_only else f'executed in {time.time() - started:.0f} s'}")


if __name__ == "__main__":
    main()
