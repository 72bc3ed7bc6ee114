"""Copy the small files of finished runs into the committed results folder.

    python experiments/collect_results.py RUNS/SECTION results/SECTION [--model RUN ...]

For each run folder RUNS/SECTION/RUN whose log has a final record, its logs/<prefix>.jsonl becomes
results/SECTION/RUN/log.jsonl and its logs/<prefix>_summary.json (flags, metrics, time, device)
results/SECTION/RUN/summary.json, without the paths of the machine it ran on (`portable_config`), and the
tables of its gap analyses (experiments/run_results.sh runs them on the 2-D sections' runs) and its posterior figure
(plots/<prefix>_posterior.png, drawn by a 2-D run's evaluation, and its table plots/<prefix>_posterior.txt) as
results/SECTION/RUN/posterior.png and posterior.txt, when it has them. Samples and other plots stay where they are,
and so do checkpoints, but for the runs named by --model: the model
their summary evaluated (checkpoints/<prefix>_best.pt, else the last) becomes results/SECTION/RUN/model.pt,
its weights and flags alone (utils.model_file), which `--eval_only --resume` re-evaluates.
"""
import argparse
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import load_checkpoint, model_file, save_checkpoint, write_json  # noqa: E402

ANALYSES = ('gap_spread.txt', 'gap_split.txt', 'gap_split.json')   # in the run folder, copied as they are


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


def copy_model(run_dir, dest):
    """Write the model a finished run was evaluated with to `dest` (utils.model_file)."""
    checkpoints = sorted(glob.glob(os.path.join(run_dir, 'checkpoints', '*.pt')))
    best = [path for path in checkpoints if path.endswith('_best.pt')]
    path = (best or checkpoints)[0]
    if not save_checkpoint(model_file(load_checkpoint(path, script=None)), dest):
        raise SystemExit(f'error: could not write {dest}')


def collect(source, dest, models=()):
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
        for name in ANALYSES:
            if os.path.exists(os.path.join(source, run, name)):
                shutil.copyfile(os.path.join(source, run, name), os.path.join(dest, run, name))
        for ending in ('png', 'txt'):
            for figure in glob.glob(os.path.join(source, run, 'plots', f'*_posterior.{ending}')):
                shutil.copyfile(figure, os.path.join(dest, run, f'posterior.{ending}'))
        if run in models:
            copy_model(os.path.join(source, run), os.path.join(dest, run, 'model.pt'))
        print(f'{run}: collected{" with its model" if run in models else ""}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help='RUNS/SECTION, the run folders')
    parser.add_argument('dest', help='results/SECTION')
    parser.add_argument('--model', action='append', default=[], metavar='RUN',
                        help='also write this run\'s evaluated model to results/SECTION/RUN/model.pt (repeatable)')
    opts = parser.parse_args()
    collect(opts.source, opts.dest, opts.model)
