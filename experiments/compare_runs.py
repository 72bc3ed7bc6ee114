"""Whether a retrained run reproduces a committed one, from their logs and summaries.

    python experiments/compare_runs.py results/SECTION/RUN RUNS/SECTION/RUN

Each folder is either a committed run (log.jsonl, summary.json) or a run folder (logs/<prefix>.jsonl,
logs/<prefix>_summary.json). The weights are reproduced when every validation ELBO that both logs hold is
equal, bit for bit, and the evaluation when the test numbers both summaries hold are (ELBO, IW, exact log p(x)).
Training losses are means over a logging window, so a window cut by a stop and a resume differs; they are
counted, not required to be equal. Timings are ignored. Exits 1 if a validation ELBO or a test number differs.
"""
import argparse
import glob
import os
import sys

from results_table import read_run

TEST_NUMBERS = ('test_elbo', 'test_log_px_iw', 'iw_samples', 'test_log_px_exact')


def read(folder):
    """(log records, summary dict or {}) of a committed run or of a run folder (results_table.read_run)."""
    if os.path.exists(os.path.join(folder, 'log.jsonl')):
        return read_run(folder)
    logs = glob.glob(os.path.join(folder, 'logs', '*.jsonl'))
    if len(logs) != 1:
        raise SystemExit(f'error: {folder} holds no log.jsonl and not exactly one logs/*.jsonl: name a run folder')
    prefix = os.path.basename(logs[0])[:-len('.jsonl')]
    return read_run(os.path.join(folder, 'logs'), f'{prefix}.jsonl', f'{prefix}_summary.json')


def logged(records, key):
    """{iteration: value} of every record that holds `key`."""
    return {r['iter']: r[key] for r in records if key in r}


def compare(committed, retrained):
    """Print the comparison; return whether the weights and the evaluation are reproduced."""
    (records_a, a), (records_b, b) = read(committed), read(retrained)
    val_a, val_b = logged(records_a, 'val_elbo'), logged(records_b, 'val_elbo')
    common = sorted(set(val_a) & set(val_b))
    val_diff = [it for it in common if val_a[it] != val_b[it]]
    print(f'validation ELBO: {len(common)} evaluations in both logs ({len(val_a)} and {len(val_b)}), '
          f'{len(common) - len(val_diff)} equal bit for bit'
          + (f'; differ at iterations {val_diff[:10]}' if val_diff else ''))
    loss_a, loss_b = logged(records_a, 'loss'), logged(records_b, 'loss')
    both = sorted(set(loss_a) & set(loss_b))
    relative = {it: abs(loss_a[it] - loss_b[it]) / abs(loss_a[it]) for it in both}
    far = [it for it in both if relative[it] > 1e-6]
    print(f'training loss: {len(both)} logging windows in both, {sum(r == 0 for r in relative.values())} equal, '
          f'{len(both) - len(far)} within 1e-6 relative'
          + (f'; further apart at iterations {far[:10]} (at most {max(relative.values()):.2g})' if far else ''))
    same_test = True
    if a and b:
        for key in TEST_NUMBERS:
            if key in a and key in b:
                same_test &= a[key] == b[key]
                print(f'{key}: {a[key]} and {b[key]}, '
                      + ('equal' if a[key] == b[key] else f'DIFFERENT by {abs(a[key] - b[key]):.2g}'))
            elif key in a or key in b:
                print(f'{key}: only in the {"committed" if key in a else "retrained"} summary, not compared')
    else:
        print('test numbers: not compared, a summary is missing')
    return not val_diff and bool(common) and same_test


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('committed', help='results/SECTION/RUN, or a run folder')
    parser.add_argument('retrained', help='RUNS/SECTION/RUN, or a committed run')
    opts = parser.parse_args()
    sys.exit(0 if compare(opts.committed, opts.retrained) else 1)
