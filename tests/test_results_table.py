"""experiments/collect_results.py and results_table.py: the README's tables from committed run files."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from scripts import ROOT, read_log, run_script
from test_training import spy_on_evaluate

sys.path.insert(0, os.path.join(ROOT, 'experiments'))
import collect_results  # noqa: E402
import results_table  # noqa: E402


def write_run(folder, records, summary=None):
    """RUNS/SECTION/RUN as a run leaves it: logs/<prefix>.jsonl and, when finished, logs/<prefix>_summary.json."""
    os.makedirs(os.path.join(folder, 'logs'))
    with open(os.path.join(folder, 'logs', 'prefix.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    if summary is not None:
        with open(os.path.join(folder, 'logs', 'prefix_summary.json'), 'w') as f:
            json.dump(summary, f)


def final(elbo, iw=None, exact=None, **extra):
    record = {'iter': 1000, 'final': True, 'test_elbo': elbo, **extra}
    if iw is not None:
        record.update(test_log_px_iw=iw, iw_samples=1000)
    if exact is not None:
        record['test_log_px_exact'] = exact
    return record


@pytest.fixture
def section(tmp_path):
    runs = tmp_path / 'runs'
    train = {'iter': 500, 'loss': 150.0, 'its_per_s': 50.0}
    write_run(runs / 'mlp_static_none', [train, final(-140.0, -137.0, -135.0)], {'its_per_s': 40.0})
    write_run(runs / 'mlp_amortized_planar_seed0', [train, final(-150.0), final(-139.0, -136.0, -134.0)], {})
    write_run(runs / 'mlp_amortized_planar_seed1', [train, final(-141.0, -137.0, -134.5)], {})
    write_run(runs / 'mlp_static_radial', [train])   # not finished
    (runs / 'mlp_static_none' / 'gap_spread.txt').write_text('| gap spread table |\n')
    (runs / 'mlp_static_none' / 'gap_split.json').write_text('[]\n')
    (runs / 'mlp_static_none' / 'plots').mkdir()
    (runs / 'mlp_static_none' / 'plots' / 'prefix_posterior.png').write_bytes(b'posterior figure')
    (runs / 'mlp_static_none' / 'plots' / 'prefix_posterior.txt').write_text('| its table |\n')
    (runs / 'mlp_static_none' / 'plots' / 'prefix_latent.png').write_bytes(b'latent figure')
    collect_results.collect(str(runs), str(tmp_path / 'results'))
    return tmp_path / 'results'


def test_collect_copies_finished_runs_only(section):
    assert sorted(os.listdir(section)) == ['mlp_amortized_planar_seed0', 'mlp_amortized_planar_seed1',
                                           'mlp_static_none']
    assert os.path.exists(section / 'mlp_static_none' / 'summary.json')
    assert os.path.exists(section / 'mlp_amortized_planar_seed1' / 'log.jsonl')
    # a run's gap analyses, those it has
    assert (section / 'mlp_static_none' / 'gap_spread.txt').read_text() == '| gap spread table |\n'
    assert (section / 'mlp_static_none' / 'gap_split.json').read_text() == '[]\n'
    assert not glob.glob(str(section / '*' / 'gap_split.txt'))
    assert not glob.glob(str(section / 'mlp_amortized_planar_seed*' / 'gap_*'))
    # its posterior figure and the figure's table, the other plots left where they are
    assert sorted(os.listdir(section / 'mlp_static_none')) == ['gap_split.json', 'gap_spread.txt', 'log.jsonl',
                                                               'posterior.png', 'posterior.txt', 'summary.json']
    assert (section / 'mlp_static_none' / 'posterior.png').read_bytes() == b'posterior figure'
    assert (section / 'mlp_static_none' / 'posterior.txt').read_text() == '| its table |\n'
    assert not glob.glob(str(section / 'mlp_amortized_planar_seed*' / '*.png'))


def test_table_rows_are_last_finals_over_seeds(section, capsys):
    results_table.table(str(section))
    table, leads = capsys.readouterr().out.split('\nleads in nats')
    lines = [line for line in table.splitlines() if line.startswith('|')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    rows = {tuple(c.strip() for c in line.strip('|').split('|'))[1]: line for line in lines[2:]}
    # no run has a validation set: those columns are dropped; the 2-D ones are there
    assert 'best validation ELBO' not in header and 'exact − ELBO' in header
    cells = dict(zip(header, (c.strip() for c in rows['planar'].strip('|').split('|'))))
    # seed 0's last final record (-139), not its first (-150); mean ± sample std over the two seeds
    assert cells['seeds'] == '2' and cells['ELBO'] == '-140.00 ± 1.41'
    assert cells['log p(x), IW'] == '-136.50 ± 0.71' and cells['exact − ELBO'] == '5.75 ± 1.06'
    cells = dict(zip(header, (c.strip() for c in rows['none'].strip('|').split('|'))))
    assert cells['exact − IW'] == '2.00' and cells['K'] == '1000' and cells['it/s'] == '40'
    assert lines[2].split('|')[2].strip() == 'none'   # the plain VAE first
    # ELBO -140, IW -136.5 and exact -134.25 against -140, -137 and -135
    assert '| mlp amortized | planar | +0.00 | +0.50 | +0.75 |' in leads


def test_gaps_keep_their_sign(tmp_path, capsys):
    """exact − IW below 0 (IW above the exact value: a quadrature or IW problem) prints negative."""
    write_run(tmp_path / 'runs' / 'mlp_static_none', [final(-140.0, -136.0, -136.5)], {})
    collect_results.collect(str(tmp_path / 'runs'), str(tmp_path / 'results'))
    results_table.table(str(tmp_path / 'results'))
    header, _, row = [line.strip('|').split('|') for line in capsys.readouterr().out.splitlines()
                      if line.startswith('|')]
    cells = dict(zip((c.strip() for c in header), (c.strip() for c in row)))
    assert cells['exact − IW'] == '-0.50' and cells['exact − ELBO'] == '3.50' and cells['IW − ELBO'] == '4.00'


def test_curve_leads_count_evaluations_ahead_of_none():
    found = {'none': [(5.0, -100.0), (10.0, -95.0), (15.0, -93.0)],
             'planar': [(5.0, -99.0), (10.0, -95.5), (15.0, -92.5)],   # ahead, behind, ahead
             'radial': [(5.0, -99.0), (10.0, -94.0)]}                  # stopped early: two shared epochs
    assert results_table.curve_leads(found) == [
        'planar: ahead of none at 2 of 3 evaluations (last behind at epoch 10), lead +0.50 nats at epoch 15',
        'radial: ahead of none at 2 of 2 evaluations (never behind), lead +1.00 nats at epoch 10']


def test_seed0_curves_reads_validation_records_in_epochs(tmp_path):
    summary = {'config': {'dataset': 'mnist', 'val_size': 10000, 'batch_size': 128}}   # 390 iterations an epoch
    records = [{'iter': 390, 'loss': 1.0}, {'iter': 1950, 'val_elbo': -99.0}, {'iter': 3900, 'val_elbo': -98.0},
               final(-97.0)]
    write_run(tmp_path / 'runs' / 'mlp_static_none_seed0', records, summary)
    write_run(tmp_path / 'runs' / 'mlp_amortized_planar_seed1', records, summary)   # not seed 0: left out
    write_run(tmp_path / 'runs' / 'mlp_static_nice_seed0', records[:2] + records[3:], summary)
    write_run(tmp_path / 'runs' / 'mlp_amortized_sylvester-orthogonal-m16_seed0', records, summary)
    collect_results.collect(str(tmp_path / 'runs'), str(tmp_path / 'results'))
    found = results_table.seed0_curves(str(tmp_path / 'results'))
    assert list(found) == ['none', 'amortized sylvester-orthogonal-m16', 'static nice']   # the table's row order
    assert found['none'] == [(5.0, -99.0), (10.0, -98.0)]
    assert found['static nice'] == [(5.0, -99.0)]
    assert found['amortized sylvester-orthogonal-m16'] == [(5.0, -99.0), (10.0, -98.0)]


def test_collected_summary_has_no_machine_paths(tmp_path):
    run = tmp_path / 'runs' / 'mlp_static_none'
    config = {'dataset': 'mnist', 'data_dir': '/data/mnist', 'seed': 0, 'out_dir': str(run),
              'resume': str(run / 'checkpoints' / 'prefix.pt'), 'eval_only': True}
    write_run(run, [final(-97.0)], {'script': 'static_flow_vae.py', 'config': config, 'test_elbo': -97.0})
    collect_results.collect(str(tmp_path / 'runs'), str(tmp_path / 'results'))
    with open(tmp_path / 'results' / 'mlp_static_none' / 'summary.json') as f:
        summary = json.load(f)
    # the flags in their order less data_dir and out_dir; resume relative to the run folder; the rest as it was
    assert summary == {'script': 'static_flow_vae.py', 'test_elbo': -97.0, 'config': {
        'dataset': 'mnist', 'seed': 0, 'resume': os.path.join('checkpoints', 'prefix.pt'), 'eval_only': True}}
    assert list(summary['config']) == ['dataset', 'seed', 'resume', 'eval_only']


def test_leads_subtract_unrounded_means():
    runs = {('mlp', 'static', 'none'): [(0, final(-100.006, -90.0), {})],
            ('mlp', 'amortized', 'planar'): [(0, final(-98.990), {}), (1, final(-98.998), {})],   # mean -98.994
            ('mlp', 'static', 'nice'): [(0, final(-99.5, -89.25), {})]}
    rows = {row['flow']: row for row in results_table.lead_rows(runs)}
    assert 'none' not in rows
    # 1.012 rounded once, where the rounded means (-98.99, -100.01) would give 1.02; planar has no IW: '–'
    assert rows['planar'] == {'model': 'mlp amortized', 'flow': 'planar', 'ELBO − none': '+1.01', 'IW − none': '–',
                              'exact − none': '–', 'ELBO − amortized planar': '–', 'IW − amortized planar': '–',
                              'exact − amortized planar': '–'}
    assert rows['nice']['ELBO − none'] == '+0.51' and rows['nice']['IW − none'] == '+0.75'
    assert rows['nice']['ELBO − amortized planar'] == '-0.51'


def test_a_collected_model_re_evaluates_to_its_summary_and_cannot_resume_training(data_root, tmp_path, capsys,
                                                                                  monkeypatch):
    """collect_results --model writes the run's best model (not its last), weights and flags alone;
    --eval_only --resume of it reproduces the summary's test ELBO and saves its samples, and training from it
    is refused in one line."""
    spy_on_evaluate(monkeypatch, val_elbos=[-10.0, -5.0, -7.0])   # of iterations 2, 4, 6: the best is the 4th
    flags = ['--max_iter', '6', '--batch_size', '8', '--latent_dim', '3', '--length', '2', '--layer', '1',
             '--hidden_dim', '16', '--iw_samples', '0', '--val_size', '16', '--eval_every', '2', '--flow', 'planar']
    run = tmp_path / 'runs' / 'mlp_amortized_planar_seed0'
    assert run_script('dynamic_flow_vae.py', [*flags, '--data_dir', data_root, '--out_dir', str(run)]) == 0
    collect_results.collect(str(tmp_path / 'runs'), str(tmp_path / 'results'), models=['mlp_amortized_planar_seed0'])
    folder = tmp_path / 'results' / 'mlp_amortized_planar_seed0'
    with open(folder / 'summary.json') as f:
        summary = json.load(f)
    model = torch.load(folder / 'model.pt', weights_only=True)
    assert sorted(model) == ['config', 'iter', 'model', 'script'] and model['iter'] == summary['best_iter'] == 4
    assert not {'data_dir', 'out_dir', 'resume'} & set(model['config'])

    monkeypatch.undo()
    out = tmp_path / 'again'
    argv = ['--resume', str(folder / 'model.pt'), '--data_dir', data_root, '--out_dir', str(out)]
    assert run_script('dynamic_flow_vae.py', [*argv, '--eval_only']) == 0
    assert read_log(str(out))[1][-1]['test_elbo'] == pytest.approx(summary['test_elbo'], abs=1e-5)
    assert os.listdir(out / 'samples') == [f'{read_log(str(out))[0]}_{summary["best_iter"]}.png']

    capsys.readouterr()
    assert run_script('dynamic_flow_vae.py', argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert 'holds a model alone' in line and '--eval_only' in line


def test_2d_rows_give_the_share_of_the_plain_vaes_gap_they_close(section, capsys):
    """none's exact − ELBO is 5; planar's seeds leave 5 and 6.5, closing 0% and −30%."""
    results_table.table(str(section))
    lines = [line for line in capsys.readouterr().out.split('\nleads in nats')[0].splitlines() if line.startswith('|')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    cells = {row[1]: dict(zip(header, row)) for row in
             ([c.strip() for c in line.strip('|').split('|')] for line in lines[2:])}
    assert cells['planar']['gap closed, %'] == '-15 ± 21' and cells['none']['gap closed, %'] == '–'
    points = results_table.gap_points(results_table.finished_runs(str(section)))
    assert points['static', 'none'] == (5.0, 0.0, 1, -135.0)
    mean, spread, seeds, log_px = points['amortized', 'planar']
    assert (mean, seeds, log_px) == (5.75, 2, -134.25) and spread == pytest.approx(1.5 / 2 ** 0.5)
    results_table.gap_figure(str(section), str(section / 'gaps.png'))
    assert os.path.getsize(section / 'gaps.png') > 0


def test_seed_picks_rank_the_gap_closed_among_runs_as_good_as_the_plain_vae(section):
    """The plain VAE's seeds: log p(x) −100 and −102 (floor −101 − √2 = −102.41), gaps 8. Amortized planar closes
    half the gap but its log p(x) is below the floor, as is static Householder's; the rest rank by gap closed."""
    def run(exact, gap):
        return final(exact - gap, exact=exact)
    runs = {('mlp', 'static', 'none'): [(0, run(-100.0, 8.0), {}), (1, run(-102.0, 8.0), {})],
            ('mlp', 'amortized', 'planar'): [(0, run(-110.0, 4.0), {})],
            ('mlp', 'static', 'householder'): [(0, run(-102.5, 6.0), {})],
            ('mlp', 'static', 'nice'): [(0, run(-99.0, 9.0), {})],
            ('mlp', 'static', 'radial'): [(0, run(-102.4, 7.5), {})],
            ('mlp', 'static', 'planar'): [(0, run(-101.0, 7.0), {}), (1, run(-101.0, 7.2), {})]}
    assert results_table.seed_picks(runs, 2) == ['static:planar', 'static:radial']
    assert results_table.seed_picks(runs, 8) == ['static:planar', 'static:radial', 'static:nice']
    assert results_table.seed_picks(results_table.finished_runs(str(section))) == []   # one seed of none: no spread


def test_seeds_of_prints_the_picks_and_refuses_a_count_below_one(section):
    """`--seeds_of N` prints seed_picks alone (none here: the section has one seed of the plain VAE); N < 1 is one
    line of error and exit status 2."""
    script = os.path.join(ROOT, 'experiments', 'results_table.py')
    ok = subprocess.run([sys.executable, script, str(section), '--seeds_of', '2'], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == '\n'
    bad = subprocess.run([sys.executable, script, str(section), '--seeds_of', '0'], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ''
    assert bad.stderr.splitlines()[-1].endswith('--seeds_of 0: give how many flows get more seeds, at least 1 '
                                                 '(e.g. --seeds_of 2)')
    assert 'Traceback' not in bad.stderr


COMMITTED_LOGS = glob.glob(os.path.join(ROOT, 'results', '*', '*', 'log.jsonl'))
SECTIONS = sorted({os.path.dirname(os.path.dirname(log)) for log in COMMITTED_LOGS})


@pytest.mark.parametrize('section', SECTIONS, ids=os.path.basename)
def test_each_committed_sections_table_is_in_the_readme_or_results_doc_as_printed(section, capsys):
    """The section's table, and the tables of its runs' gap analyses (the leads are quoted in prose)."""
    results_table.table(section)
    blocks = [block.strip() for block in capsys.readouterr().out.split('\n\n') if block.strip().startswith('|')]
    docs = ''.join(open(os.path.join(ROOT, name)).read() for name in ('README.md', os.path.join('docs', 'results.md')))
    tables = [blocks[0]] + [block for block in blocks[1:] if block.startswith('| checkpoint')]
    for table in tables:
        assert table in docs, f'a table of results/{os.path.basename(section)} is not in the README or docs/results.md'


def test_gap_analyses_of_a_sections_runs_print_under_one_header_per_setting(tmp_path, capsys):
    def analysis(run, above, row):
        os.makedirs(tmp_path / run, exist_ok=True)
        write_run(tmp_path / run, [final(-140.0)])
        (tmp_path / run / 'gap_spread.txt').write_text(f'# made by ...\n{above}\n\n| checkpoint | mean |\n|---|---:|\n{row}\n')
    analysis('mlp_static_planar', '100 draws', '| planar | 2.0 |')
    analysis('mlp_static_none_seed1', '100 draws', '| none seed 1 | 1.0 |')
    analysis('mlp_amortized_nice', '10 draws', '| nice | 3.0 |')
    analysis('mlp_static_none_seed0', '100 draws', '| none seed 0 | 0.0 |')
    results_table.analysis_table(str(tmp_path), 'gap_spread.txt', 'spread')
    out = capsys.readouterr().out
    assert '# made by' not in out
    header = '| checkpoint | mean |\n|---|---:|\n'
    # the table's row order (none, its seeds in order, then static planar), and the other setting on its own
    assert (f"spread (each run's gap_spread.txt)\n\n100 draws\n\n{header}| none seed 0 | 0.0 |\n| none seed 1 | 1.0 |\n"
            f'| planar | 2.0 |\n') in out
    assert f"10 draws\n\n{header}| nice | 3.0 |\n" in out and out.count('spread (each run') == 2
