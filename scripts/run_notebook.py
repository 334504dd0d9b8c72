"""Execute one notebook with nbclient (Debian's Jupyter) and the tslab kernel.

Usage: /usr/bin/python3 scripts/run_notebook.py IN.ipynb OUT.ipynb [--runs N]

With --runs N (default 1) every cell is executed N times in order in one kernel, as a user's
"Run All" pressed N times: OUT then holds the last run's outputs, which must stand on their own
(a chart whose plotly.js bundle went out with the first run's outputs must still show).

Writes the executed notebook to OUT (also when a cell fails, so its outputs can be read) and exits
1 on the first failing cell, printing that cell's source and its stderr/error outputs: tslab sends
TypeScript diagnostics and uncaught exceptions to stderr, which nbclient's own message omits.
"""
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def run_all(client: NotebookClient, nb, runs: int) -> None:
    """Execute the notebook `runs` times in one kernel (once: nbclient's own execute()).

    Each executed cell gets its execution count, counting on across runs as the kernel's prompt
    does (a second Run All of 9 cells shows In [10] … In [18]); tslab sends no execute_input, so
    without it every prompt would read In [ ].
    """
    if runs <= 1:
        client.execute()
        return
    count = 0
    with client.setup_kernel():
        for _ in range(runs):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                cell.outputs = []  # a re-run replaces the cell's outputs, as in Jupyter
                count += 1
                client.execute_cell(cell, index, execution_count=count)


def main(src: str, dst: str, runs: int = 1) -> int:
    nb = nbformat.read(src, as_version=4)
    # A cell may run long on a busy machine (notebook 01's 150 training steps took 13 minutes on two
    # shared cores); an hour still catches a hang.
    client = NotebookClient(nb, kernel_name="tslab", timeout=3600, allow_errors=False)
    try:
        run_all(client, nb, runs)
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
    argv = sys.argv[1:]
    runs = 1
    if "--runs" in argv:
        i = argv.index("--runs")
        runs = int(argv[i + 1])
        del argv[i : i + 2]
    if len(argv) != 2 or runs < 1:
        print("usage: run_notebook.py IN.ipynb OUT.ipynb [--runs N]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(argv[0], argv[1], runs))
