"""experiments/run_results.sh launches each section's runs with the protocol's flags: run with a stub `python`
first on PATH that only records its arguments, so nothing trains."""
import os
import subprocess

import pytest

from scripts import ROOT

STUB = '#!/usr/bin/env bash\necho "$*" >> "$CALLS"\n'


def launched(tmp_path, *sections, **env):
    """(exit code, stderr, the training commands the script started: each a list of its arguments)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'python').write_text(STUB)
    (bin_dir / 'python').chmod(0o755)
    calls_file = tmp_path / 'calls.txt'
    env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'CALLS': str(calls_file),
           'OUT': str(tmp_path / 'runs'), 'JOBS': '1', 'RUNS': '.', 'SEEDS_OF': '', **env}
    done = subprocess.run(['bash', os.path.join(ROOT, 'experiments', 'run_results.sh'), *sections],
                          env=env, capture_output=True, text=True, timeout=120)
    calls = [line.split() for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return done.returncode, done.stderr, [argv for argv in calls
                                          if argv[0].endswith('_vae.py') and '--eval_only' not in argv]


def flag(argv, name):
    """The value that follows `name` in argv."""
    return argv[argv.index(name) + 1]


def test_mnist40_full_trains_in_bfloat16_at_latent_40_and_latent2_full_in_float32_at_latent_2(tmp_path):
    code, _, runs = launched(tmp_path, 'mnist40_full', 'latent2_full',
                             RUNS='^mlp_(static_none|amortized_planar)_seed0$')
    assert code == 0
    by_section = {tuple(flag(argv, '--out_dir').split(os.sep)[-2:]): argv for argv in runs}
    assert set(by_section) == {(s, r) for s in ('mnist40_full', 'latent2_full')
                               for r in ('mlp_static_none_seed0', 'mlp_amortized_planar_seed0')}
    for (section, run), argv in by_section.items():
        assert flag(argv, '--precision') == ('bf16' if section == 'mnist40_full' else 'fp32')
        assert flag(argv, '--latent_dim') == ('40' if section == 'mnist40_full' else '2')
        assert argv[0] == ('dynamic_flow_vae.py' if 'amortized' in run else 'static_flow_vae.py')
        assert flag(argv, '--max_iter') == '390000' and flag(argv, '--seed') == '0'


def test_seeds_of_adds_seeds_1_and_2_of_the_named_runs(tmp_path):
    code, _, runs = launched(tmp_path, 'latent2_full', RUNS='seed[12]$', SEEDS_OF='amortized:nice static:iaf')
    assert code == 0
    names = sorted(os.path.basename(flag(r, '--out_dir')) for r in runs)
    assert names == sorted(['mlp_static_none_seed1', 'mlp_static_none_seed2',
                            'mlp_amortized_nice_seed1', 'mlp_amortized_nice_seed2',
                            'mlp_static_iaf_seed1', 'mlp_static_iaf_seed2'])


@pytest.mark.parametrize('seeds_of', ['nice', 'amortised:nice', 'static:IAF'])
def test_a_malformed_seeds_of_is_refused_before_any_run(tmp_path, seeds_of):
    code, err, runs = launched(tmp_path, 'latent2_full', SEEDS_OF=seeds_of)
    assert code == 2 and f"SEEDS_OF: '{seeds_of}' is not MODE:FLOW" in err
    assert runs == [] and not (tmp_path / 'runs').exists()


def test_a_finished_2d_run_gets_its_gap_analyses_in_its_folder_and_a_40d_run_none(tmp_path):
    for section in ('latent2_full', 'mnist40_full'):
        checkpoints = tmp_path / 'runs' / section / 'mlp_static_none_seed0' / 'checkpoints'
        checkpoints.mkdir(parents=True)
        (checkpoints / 'p.pt').touch()
        (checkpoints / 'p_best.pt').touch()
    code, err, _ = launched(tmp_path, 'latent2_full', 'mnist40_full', RUNS='^mlp_static_none_seed0$')
    assert code == 0, err
    calls = [line.split() for line in (tmp_path / 'calls.txt').read_text().splitlines()]
    analyses = [argv for argv in calls if argv[0].endswith(('gap_spread.py', 'gap_split.py'))]
    best = 'mlp_static_none_seed0/checkpoints/p_best.pt'   # relative to the section's folder, where they run
    assert analyses == [[os.path.join(ROOT, 'experiments', 'gap_spread.py'), best],
                        [os.path.join(ROOT, 'experiments', 'gap_split.py'), best, '--steps', '800',
                         '--json', 'mlp_static_none_seed0/gap_split.json']]
    run_dir = tmp_path / 'runs' / 'latent2_full' / 'mlp_static_none_seed0'
    assert {p.name for p in run_dir.glob('gap_*.txt*')} == {'gap_spread.txt', 'gap_split.txt'}
