"""Print the test-set tables of a folder of runs made by run_results.sh (OUT/SECTION/RUN/logs/*.jsonl).

    python benchmarks/results_table.py results/mnist40

Each run's numbers are the last final record of its log. RUN is MODEL_MODE_FLOW (e.g. mlp_static_planar).
The first table has a row per flow and a pair of columns (ELBO, IW) per model and mode, in nats for
binary data and bits/dim for 8-bit data; the second lists every run with its iterations, skipped steps and K.
"""
import glob
import json
import os
import sys

FLOWS = ('none', 'planar', 'radial', 'householder', 'nice')


def final_record(folder):
    """The last final record of the run's log, or None when the run has not finished."""
    finals = []
    for path in glob.glob(os.path.join(folder, 'logs', '*.jsonl')):
        with open(path) as f:
            finals += [r for r in map(json.loads, f) if r.get('final')]
    return finals[-1] if finals else None


def numbers(record):
    """(ELBO, IW, unit) as printed: nats, or bits/dim (lower is better) for 8-bit data."""
    if 'test_bpd_elbo' in record:
        return f'{record["test_bpd_elbo"]:.4f}', f'{record.get("test_bpd_log_px_iw", float("nan")):.4f}', 'bits/dim'
    return f'{record["test_elbo"]:.2f}', f'{record.get("test_log_px_iw", float("nan")):.2f}', 'nats'


def main(section):
    runs = {}
    for name in sorted(os.listdir(section)):
        record = final_record(os.path.join(section, name))
        model, mode, flow = name.split('_', 2)
        if record is not None:
            runs[model, mode, flow] = record
    if not runs:
        print(f'{section}: no finished runs')
        return
    columns = sorted({(model, mode) for model, mode, _ in runs}, key=lambda c: (c[0] != 'mlp', c[1] != 'static'))
    unit = numbers(next(iter(runs.values())))[2]
    print(f'\n{section} (test set; {unit}; ELBO and IW log-likelihood, or -ELBO and -log p(x) in bits/dim)\n')
    header = ''.join(f' {model} {mode}: ELBO | {model} {mode}: IW |' for model, mode in columns)
    print(f'| flow (length 16) |{header}')
    print('|---|' + '---:|' * 2 * len(columns))
    for flow in [f for f in FLOWS if any(key[2] == f for key in runs)]:
        cells = [' | '.join(numbers(runs[c + (flow,)])[:2]) if c + (flow,) in runs else '– | –' for c in columns]
        print(f'| {flow} | ' + ' | '.join(cells) + ' |')
    print('\n| run | iterations | skipped steps | K |')
    print('|---|---:|---:|---:|')
    for (model, mode, flow), record in sorted(runs.items()):
        print(f'| {model}_{mode}_{flow} | {record["iter"]} | {record["skipped"]} | {record.get("iw_samples", "–")} |')


if __name__ == '__main__':
    for folder in sys.argv[1:]:
        main(folder)
