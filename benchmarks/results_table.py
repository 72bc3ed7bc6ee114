"""Print the test-set table of a folder of run logs (the final record of each logs/*.jsonl).

    python benchmarks/results_table.py results/latent2/logs
"""
import json
import os
import sys


def final_record(path):
    with open(path) as f:
        finals = [r for r in map(json.loads, f) if r.get('final')]
    return finals[-1] if finals else None


def main(folder):
    print('| run | iterations | skipped steps | test ELBO | test log p(x), IW (K) |')
    print('|---|---:|---:|---:|---:|')
    for name in sorted(os.listdir(folder)):
        record = final_record(os.path.join(folder, name))
        if record is None:
            continue
        if 'test_bpd_elbo' in record:
            values = f'{record["test_bpd_elbo"]:.4f} bits/dim | {record["test_bpd_log_px_iw"]:.4f} bits/dim'
        else:
            values = f'{record["test_elbo"]:.2f} nats | {record["test_log_px_iw"]:.2f} nats'
        print(f'| `{name[:-len(".jsonl")]}` | {record["iter"]} | {record["skipped"]} | {values} '
              f'({record["iw_samples"]}) |')


if __name__ == '__main__':
    main(sys.argv[1])
