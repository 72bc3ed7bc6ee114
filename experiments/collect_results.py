"""Copy the small files of finished runs into the committed results folder.

    python experiments/collect_results.py RUNS/SECTION results/SECTION

For each run folder RUNS/SECTION/RUN whose log has a final record, its logs/<prefix>.jsonl becomes
results/SECTION/RUN/log.jsonl and its logs/<prefix>_summary.json (flags, metrics, time, device)
results/SECTION/RUN/summary.json. Checkpoints, samples and plots stay where they are.
"""
import glob
import json
import os
import shutil
import sys


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
            shutil.copyfile(summary, os.path.join(dest, run, 'summary.json'))
        print(f'{run}: collected')


if __name__ == '__main__':
    collect(*sys.argv[1:3])
