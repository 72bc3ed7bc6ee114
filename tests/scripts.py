"""Running the training scripts inside the test process, and reading what they wrote."""
import json
import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, argv):
    """Run a script in this process as `python script argv`; returns its exit code."""
    old, threads = sys.argv, torch.get_num_threads()
    sys.argv = [script, *argv]
    torch.set_num_threads(1)   # tiny models: one thread is fastest, and subprocesses get the other core
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = old
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)   # as the test process starts; a CPU run sets it
    raise AssertionError('the script returned without sys.exit')


def read_log(out_dir):
    """(prefix, records) of the run's one logs/<prefix>.jsonl; every line must be whole JSON."""
    (name,) = [f for f in os.listdir(os.path.join(out_dir, 'logs')) if f.endswith('.jsonl')]
    with open(os.path.join(out_dir, 'logs', name)) as f:
        return name[:-len('.jsonl')], [json.loads(line) for line in f]
