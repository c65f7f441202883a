"""Shared helpers for the benchmarks: machine/version facts, peak memory of a child, JSON output."""
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def machine_facts():
    """CPU, cores, memory, Python and the versions of the libraries that matter for speed."""
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "datasets", "ctranslate2", "jax", "peft", "soundfile", "soxr"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "gpu": gpu,
            "python": platform.python_version(), "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _tree_memory_mb(root_pid):
    """Sum of VmRSS and of RssAnon (MB) over ``root_pid`` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total = {"VmRSS": 0, "RssAnon": 0}
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in total:
                        total[key] += int(line.split()[1]) // 1024
        except OSError:
            continue
    return total


def run_measured(command, env=None, interval=0.05):
    """Run ``command`` as a child; return ``(wall_seconds, memory, completed_process)``.

    ``memory`` holds the peaks, in GB, of the summed RSS and of the summed anonymous memory (RssAnon:
    heap, not memory-mapped files) of the child's whole process tree, sampled every ``interval`` s.
    RSS also counts pages of memory-mapped Arrow files that were read, which the kernel can drop at
    any time; RssAnon is what really has to fit in memory.
    """
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})}, cwd=REPO_ROOT)
    peaks = {"VmRSS": 0, "RssAnon": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for key, value in _tree_memory_mb(child.pid).items():
                peaks[key] = max(peaks[key], value)
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    memory = {"peak_rss_gb": peaks["VmRSS"] / 1024, "peak_anon_gb": peaks["RssAnon"] / 1024}
    return wall, memory, subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def failure_line(exc, width=160):
    """The line of a failed child's message that says what went wrong (its last ``...Error``/``error:``
    line, else its last line), for an error row of a table."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":", 1)[0] or line.startswith("error:")]
    return ((errors or lines or [type(exc).__name__])[-1])[:width]


def peak_rss_gb_self():
    """Peak RSS of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_json(path, payload):
    """Write the benchmark's figures with the machine facts."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"machine": machine_facts(), **payload}, f, indent=2, ensure_ascii=False)
        f.write("\n")


def table_columns(columns, on_gpu):
    """``columns`` with ``peak_gpu_gb`` inserted before the last one (``error``) when the run used a GPU."""
    return columns[:-1] + ["peak_gpu_gb", columns[-1]] if on_gpu else columns


def print_table(rows, columns):
    """Print a list of dicts as an aligned text table (also returned as a string)."""
    cells = [columns] + [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    text = "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
    print(text)
    return text


def add_row_process_flags(parser, name, work_dir_holds):
    """The flags of a benchmark whose rows each run in a child process of the same script: where the
    figures go (``bench/out/<name>.json``), the work folder, and the two internal flags of a child."""
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "out", f"{name}.json"),
                        help="JSON file for the figures (machine, versions, settings, rows, table)")
    parser.add_argument("--work_dir", default=None, help=f"folder for {work_dir_holds} (none: a temporary folder, "
                        "removed at the end)")
    parser.add_argument("--only", default=None, help="internal: run this one row in this process (used for the "
                        "child processes)")
    parser.add_argument("--row_json", default=None, help="internal: where --only writes the row's figures")
    return parser


@contextlib.contextmanager
def work_folder(args, name):
    """Set ``args.work_dir`` to an absolute folder for the ``with`` block (a new temporary one when --work_dir
    was not given, removed afterwards, whatever happens; a given one is created if needed and kept)."""
    keep = args.work_dir is not None
    args.work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix=f"bench-{name}-"))
    os.makedirs(args.work_dir, exist_ok=True)
    try:
        yield args.work_dir
    finally:
        if not keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)


def parent_settings(args):
    """The parent process's flags, as a result file records them (without the internal child flags)."""
    return {key: value for key, value in vars(args).items() if key not in ("only", "row_json")}
