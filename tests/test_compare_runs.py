"""experiments/compare_runs.py: whether a retrained run reproduces a committed one."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'))
import compare_runs  # noqa: E402

LOG = [{'iter': 10, 'loss': 90.5, 'its_per_s': 50.0, 'skipped': 0},
       {'iter': 10, 'val_elbo': -95.25, 'best_iter': 10},
       {'iter': 20, 'loss': 88.125, 'its_per_s': 51.0, 'skipped': 0},
       {'iter': 20, 'val_elbo': -94.5, 'best_iter': 20}]
SUMMARY = {'test_elbo': -93.75, 'test_log_px_iw': -90.5, 'iw_samples': 5000, 'train_seconds': 100.0}


def write_lines(path, records):
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)


def committed_run(folder, log=LOG, summary=SUMMARY):
    """results/SECTION/RUN as committed: log.jsonl and summary.json."""
    os.makedirs(folder)
    write_lines(os.path.join(folder, 'log.jsonl'), log)
    with open(os.path.join(folder, 'summary.json'), 'w') as f:
        json.dump(summary, f)
    return str(folder)


def run_folder(folder, log=LOG, summary=SUMMARY):
    """RUNS/SECTION/RUN as a run leaves it: logs/<prefix>.jsonl and logs/<prefix>_summary.json."""
    os.makedirs(os.path.join(folder, 'logs'))
    write_lines(os.path.join(folder, 'logs', 'prefix.jsonl'), log)
    if summary is not None:
        with open(os.path.join(folder, 'logs', 'prefix_summary.json'), 'w') as f:
            json.dump(summary, f)
    return str(folder)


def test_a_run_reproduced_with_other_timings_passes(tmp_path, capsys):
    retrained = [dict(r, its_per_s=1.0) if 'its_per_s' in r else r for r in LOG]
    assert compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', retrained,
                                                                        dict(SUMMARY, train_seconds=7.0)))
    out = capsys.readouterr().out
    assert '2 evaluations in both logs (2 and 2), 2 equal bit for bit' in out
    assert 'test_elbo: -93.75 and -93.75, equal' in out


def test_a_cut_logging_window_is_counted_not_failed(tmp_path, capsys):
    resumed = [dict(r, loss=70.0) if r.get('iter') == 20 and 'loss' in r else r for r in LOG]
    assert compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', resumed))
    assert 'further apart at iterations [20]' in capsys.readouterr().out


@pytest.mark.parametrize('change', ['validation', 'test'])
def test_a_different_number_fails(tmp_path, capsys, change):
    log, summary = LOG, SUMMARY
    if change == 'validation':
        log = [dict(r, val_elbo=-94.5 + 2 ** -30) if r.get('iter') == 20 and 'val_elbo' in r else r for r in LOG]
    else:
        summary = dict(SUMMARY, test_log_px_iw=-90.5 + 2 ** -30)
    assert not compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', log, summary))
    out = capsys.readouterr().out
    assert ('differ at iterations [20]' in out) if change == 'validation' else ('DIFFERENT by 9.3e-10' in out)


def test_a_run_unfinished_compares_its_weights_alone(tmp_path, capsys):
    assert compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', LOG[:2], None))
    assert 'not compared, a summary is missing' in capsys.readouterr().out


def test_a_test_number_in_one_summary_only_is_named_not_compared(tmp_path, capsys):
    without_iw = {key: value for key, value in SUMMARY.items() if key not in ('test_log_px_iw', 'iw_samples')}
    assert compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', LOG, without_iw))
    out = capsys.readouterr().out
    assert 'test_log_px_iw: only in the committed summary, not compared' in out
    assert 'test_elbo: -93.75 and -93.75, equal' in out


def test_no_common_evaluation_fails(tmp_path):
    assert not compare_runs.compare(committed_run(tmp_path / 'a'), run_folder(tmp_path / 'b', LOG[:1]))


def test_a_folder_without_a_log_is_refused(tmp_path):
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(SystemExit, match='name a run folder'):
        compare_runs.compare(committed_run(tmp_path / 'a'), str(tmp_path / 'empty'))
