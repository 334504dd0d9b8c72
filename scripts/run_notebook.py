"""Execute one notebook with nbclient (Debian's Jupyter) and the tslab kernel.

Usage: /usr/bin/python3 scripts/run_notebook.py IN.ipynb OUT.ipynb

Writes the executed notebook to OUT (also when a cell fails, so its outputs can be read) and exits
1 on the first failing cell, printing that cell's source and its stderr/error outputs: tslab sends
TypeScript diagnostics and uncaught exceptions to stderr, which nbclient's own message omits.
"""
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(src: str, dst: str) -> int:
    nb = nbformat.read(src, as_version=4)
    client = NotebookClient(nb, kernel_name="tslab", timeout=900, allow_errors=False)
    try:
        client.execute()
    except CellExecutionError:
        failed = None
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and cell.get("outputs") is not None and cell.get("execution_count") is None and cell.outputs:
                failed = (i, cell)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            errs = [o for o in cell.outputs if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr")]
            if errs:
                failed = (i, cell)
                break
        nbformat.write(nb, dst)
        if failed:
            i, cell = failed
            print(f"cell {i + 1} failed:\n{cell.source}\n----", file=sys.stderr)
            for o in cell.outputs:
                if o.output_type == "stream":
                    print(o.text[-4000:], file=sys.stderr)
                elif o.output_type == "error":
                    print(f"{o.ename}: {o.evalue}", file=sys.stderr)
        else:
            print("a cell failed without output (see the kernel log above)", file=sys.stderr)
        return 1
    nbformat.write(nb, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
