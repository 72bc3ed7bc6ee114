"""Copy the small files of finished runs into the committed results folder.

    python experiments/collect_results.py RUNS/SECTION results/SECTION

For each run folder RUNS/SECTION/RUN whose log has a final record, its logs/<prefix>.jsonl becomes
results/SECTION/RUN/log.jsonl and its logs/<prefix>_summary.json (flags, metrics, time, device)
results/SECTION/RUN/summary.json, without the paths of the machine it ran on (`portable_config`).
Checkpoints, samples and plots stay where they are.
"""
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import write_json  # noqa: E402


def portable_config(config):
    """The run's flags without the machine's paths: no data_dir and no out_dir (the run folder itself), and
    resume, when given, relative to the run folder (e.g. checkpoints/<prefix>.pt for a run resumed from its own
    checkpoint). Every other flag as it was, in its order."""
    out = {key: value for key, value in config.items() if key not in ('data_dir', 'out_dir')}
    if config.get('resume'):
        out['resume'] = os.path.relpath(config['resume'], config.get('out_dir', '.'))
    return out


def copy_summary(source, dest):
    """Write the summary at `source` to `dest` with its config made portable (utils.write_json's format)."""
    with open(source) as f:
        summary = json.load(f)
    if 'config' in summary:
        summary['config'] = portable_config(summary['config'])
    write_json(dest, summary)


def collect(source, dest):
    for log in sorted(glob.glob(os.path.join(source, '*', 'logs', '*.jsonl'))):
        run = os.path.basename(os.path.dirname(os.path.dirname(log)))
        with open(log) as f:
            if not any(json.loads(line).get('final') for line in f):
                print(f'{run}: not finished, skipped')
                continue
        os.makedirs(os.path.join(dest, run), exist_ok=True)
        shutil.copyfile(log, os.path.join(dest, run, 'log.jsonl'))
        summary = log[:-len('.jsonl')] + '_summary.json'
        if os.path.exists(summary):
            copy_summary(summary, os.path.join(dest, run, 'summary.json'))
        print(f'{run}: collected')


if __name__ == '__main__':
    collect(*sys.argv[1:3])
