"""The README's results tables, printed from the committed run files under results/SECTION/RUN/.

    python experiments/results_table.py results/mnist40_full [--curves plots/mnist40_full_val_elbo.png]
    python experiments/results_table.py results/latent2_full [--gaps plots/latent2_full_gaps.png]
    python experiments/results_table.py results/latent2_full --seeds_of 2

RUN is MODEL_MODE_FLOW or MODEL_MODE_FLOW_seedN (e.g. mlp_amortized_planar_seed1); each holds log.jsonl (the
run's log) and, from runs made since summaries exist, summary.json (flags, device, time). A run's numbers are
its log's last final record; runs of one model that differ only in seed are one row, mean ± standard deviation.
Test-set numbers, in nats for binary data and bits/dim for 8-bit data; with a validation set they are those of
the best checkpoint, whose iteration (and epoch) the table gives. Under it, the differences the prose quotes: each
row's lead in test ELBO and IW (nats) over the plain VAE and over amortized planar, the means subtracted before
rounding. In 2-D, 'gap closed, %' is the share of the plain VAE's exact − ELBO (its mean over seeds) that a run
closes, 100 (1 − gap / gap_none), over the run's seeds. `--curves` draws the validation ELBO against the epoch of
seed 0 of every run, amortized and static flows side by side, and prints at how many evaluations each flow is
ahead of the plain VAE; `--gaps` draws each row's exact − ELBO, static beside amortized, against the plain VAE's.
Last, the gap analyses of a 2-D section (experiments/gap_spread.py and gap_split.py; experiments/run_results.sh
writes them into each run folder), each run's rows under one header. `--seeds_of N` prints, instead of the tables,
the N flows of a 2-D section that get more seeds, as run_results.sh's SEEDS_OF takes them (seed_picks).
"""
import argparse
import glob
import json
import os
import re
import statistics

MODES = ('static', 'amortized')
ANALYSES = {'gap_spread.txt': 'how exact − ELBO spreads over the test images',
            'gap_split.txt': 'the gap split into approximation and amortization'}   # experiments/gap_*.py
FLOW_ORDER = ('none', 'planar', 'radial', 'householder', 'nice', 'sylvester-orthogonal', 'sylvester-householder',
              'sylvester-triangular', 'iaf')


def read_run(folder, log='log.jsonl', summary='summary.json'):
    """(records of the log, summary dict or {}) of one committed run; `log` and `summary` name its files in
    `folder` (a run folder's logs/ holds <prefix>.jsonl and <prefix>_summary.json)."""
    with open(os.path.join(folder, log)) as f:
        records = [json.loads(line) for line in f]
    path = os.path.join(folder, summary)
    if not os.path.exists(path):
        return records, {}
    with open(path) as f:
        return records, json.load(f)


def split_name(name):
    """'mlp_amortized_planar_seed1' -> ('mlp', 'amortized', 'planar', 1); no suffix: seed 0."""
    match = re.fullmatch(r'([a-z]+)_([a-z]+)_(.+?)(?:_seed(\d+))?', name)
    model, mode, flow, seed = match.groups()
    return model, mode, flow, int(seed or 0)


def cell(values, digits):
    """'x' for one value, 'mean ± std' for several."""
    if not values:
        return '–'
    if len(values) == 1:
        return f'{values[0]:.{digits}f}'
    return f'{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def finished_runs(section):
    """{(model, mode, flow): [(seed, last final record, summary), ...]} of the section's finished runs."""
    runs = {}
    for folder in sorted(glob.glob(os.path.join(section, '*', 'log.jsonl'))):
        folder = os.path.dirname(folder)
        records, summary = read_run(folder)
        finals = [r for r in records if r.get('final')]
        if finals:
            model, mode, flow, seed = split_name(os.path.basename(folder))
            runs.setdefault((model, mode, flow), []).append((seed, finals[-1], summary))
    return runs


def table(section):
    runs = finished_runs(section)
    if not runs:
        print(f'{section}: no finished runs')
        return
    binary = 'test_bpd_elbo' not in next(iter(runs.values()))[0][1]
    unit, key, digits = ('nats', 'test_', 2) if binary else ('bits/dim', 'test_bpd_', 4)
    rows = []
    for (model, mode, flow), group in sorted(runs.items(), key=lambda kv: row_order(kv[0])):
        finals = [final for _, final, _ in group]

        def values(name, minus=None):   # a metric over the seeds that have it, or its difference to another
            return [f[name] - f[minus] if minus else f[name] for f in finals
                    if name in f and (minus is None or minus in f)]

        best = []
        for _, final, summary in group:
            if 'best_iter' in final:
                per_epoch = epoch_length(summary)
                best.append(f"{final['best_iter']}" + (f" ({final['best_iter'] / per_epoch:.0f})" if per_epoch else ''))
        elbo, iw, exact = f'{key}elbo', f'{key}log_px_iw', f'{key}log_px_exact'
        none_gap = mean_gap(runs.get((model, 'static', 'none'), []), elbo, exact)
        k = sorted({f['iw_samples'] for f in finals if iw in f})
        rows.append({
            'model': f'{model} {mode}', 'flow': flow, 'seeds': str(len(group)),
            'ELBO': cell(values(elbo), digits), 'log p(x), IW': cell(values(iw), digits),
            'IW − ELBO': cell(values(iw, elbo), digits), 'K': '/'.join(map(str, k)) or '–',
            # in 2-D, log p(x) itself by quadrature; its gaps to the ELBO (the mean KL) and to IW
            'log p(x), exact': cell(values(exact), digits), 'exact − ELBO': cell(values(exact, elbo), digits),
            'exact − IW': cell(values(exact, iw), digits),
            'gap closed, %': cell([100 * (1 - gap / none_gap) for gap in values(exact, elbo)]
                               if none_gap and flow != 'none' else [], 0),
            'best validation ELBO': cell(values('best_val_elbo'), 2),
            'best iteration (epoch)': ', '.join(best) or '–',
            'it/s': cell([s['its_per_s'] for _, _, s in group if s.get('its_per_s')], 0)})
    print_rows(rows, f'\n{section} (test set, {unit})')
    print_rows(lead_rows(runs), '\nleads in nats, flow − reference: the unrounded means over seeds subtracted, then '
                                'rounded once')
    for name, title in ANALYSES.items():
        analysis_table(section, name, title)


def analysis_table(section, name, title):
    """The rows of each run's table RUN/`name` (a gap analysis, one row per checkpoint) under one header, in the
    table's row order; runs whose tables differ in the lines above their rows (other settings) get a table each.
    Lines that begin with '#' (how a table was made) are left out."""
    tables = {}   # the lines above the rows -> the rows
    for path in sorted(glob.glob(os.path.join(section, '*', name)), key=run_order):
        with open(path) as f:
            lines = [line.rstrip('\n') for line in f if not line.startswith('#')]
        first = next(i for i, line in enumerate(lines) if line.startswith('|'))
        tables.setdefault(tuple(lines[:first + 2]), []).extend(line for line in lines[first + 2:] if line.startswith('|'))
    for above, rows in tables.items():
        print(f'\n{title} (each run\'s {name})\n')
        print('\n'.join(above + tuple(rows)))


def run_order(path):
    """Sort key of a file in a run folder: the run's row, then its seed."""
    model, mode, flow, seed = split_name(os.path.basename(os.path.dirname(path)))
    return row_order((model, mode, flow)), seed


def row_order(key):
    """Sort key of a row (model, mode, flow): by model, the plain VAE first, then by mode and FLOW_ORDER."""
    model, mode, flow = key
    rank = FLOW_ORDER.index(flow) if flow in FLOW_ORDER else len(FLOW_ORDER)
    return model, flow != 'none', mode, rank, flow


def mean_of(group, name):
    """The unrounded mean of metric `name` over the seeds of a row that have it, or None."""
    found = [final[name] for _, final, _ in group if name in final]
    return statistics.mean(found) if found else None


def mean_gap(group, elbo, exact):
    """The plain VAE's exact − ELBO, the mean over its seeds, or None where it has no exact log p(x)."""
    gaps = [final[exact] - final[elbo] for _, final, _ in group if exact in final]
    return statistics.mean(gaps) if gaps else None


def lead_rows(runs):
    """The differences the prose quotes: for each row but the plain VAE, its mean test ELBO, IW and, in 2-D, exact
    log p(x) (nats) minus those of the plain VAE (the same model, static, none) and of amortized planar, each from
    unrounded means and rounded once to 2 decimals; '–' where a mean is missing. The exact lead tells a flow whose
    gap is smaller because q_K is closer to p(z|x) from one whose decoder is worse."""
    rows = []
    for model, mode, flow in sorted(runs, key=row_order):
        if flow == 'none':
            continue
        row = {'model': f'{model} {mode}', 'flow': flow}
        references = (('none', (model, 'static', 'none')), ('amortized planar', (model, 'amortized', 'planar')))
        for against, reference in references:
            for label, name in (('ELBO', 'test_elbo'), ('IW', 'test_log_px_iw'), ('exact', 'test_log_px_exact')):
                ours, theirs = mean_of(runs[model, mode, flow], name), mean_of(runs.get(reference, []), name)
                lead = ours is not None and theirs is not None and reference != (model, mode, flow)
                row[f'{label} − {against}'] = f'{ours - theirs:+.2f}' if lead else '–'
        rows.append(row)
    return rows


def print_rows(rows, title):
    """A markdown table of `rows` (dicts of cells) under `title`, without the columns where every cell is '–' (no
    run has it); nothing when only the model and flow columns would be left."""
    columns = [c for c in rows[0] if any(row[c] != '–' for row in rows)] if rows else []
    if columns in ([], ['model', 'flow']):
        return
    print(f'{title}\n')
    print('| ' + ' | '.join(columns) + ' |')
    print('|' + '|'.join('---' if c in ('model', 'flow') else '---:' for c in columns) + '|')
    for row in rows:
        print('| ' + ' | '.join(row[c] for c in columns) + ' |')


def epoch_length(summary):
    """Iterations per epoch of a run (its training images // batch size), from its flags; None if unknown."""
    cfg = summary.get('config')
    if not cfg or cfg.get('dataset') != 'mnist':
        return None
    return (60000 - cfg.get('val_size', 0)) // cfg['batch_size']


def seed0_curves(section):
    """{label: [(epoch, validation ELBO), ...]} of seed 0 of every MLP run of the section, the plain VAE labelled
    'none' and each flow 'MODE FLOW' (e.g. 'amortized planar'), in the table's row order."""
    found = {}
    folders = glob.glob(os.path.join(section, 'mlp_*'))
    for folder in sorted(folders, key=lambda f: row_order(split_name(os.path.basename(f))[:3])):
        model, mode, flow, seed = split_name(os.path.basename(folder))
        log = os.path.join(folder, 'log.jsonl')
        if seed != 0 or mode not in MODES or not os.path.exists(log):
            continue
        records, summary = read_run(folder)
        per_epoch = epoch_length(summary) or 1
        points = [(r['iter'] / per_epoch, r['val_elbo']) for r in records if 'val_elbo' in r]
        if points:
            found['none' if flow == 'none' else f'{mode} {flow}'] = points
    return found


def curve_leads(found):
    """For each flow of seed0_curves, against `none` at the epochs both evaluated: a line with how many
    evaluations it is ahead, the last epoch at which it is behind, and its lead at the last shared epoch."""
    none = dict(found.get('none', []))
    lines = []
    for flow, points in found.items():
        shared = [(epoch, value - none[epoch]) for epoch, value in points if epoch in none]
        if flow != 'none' and shared:
            behind = [epoch for epoch, lead in shared if lead <= 0]
            last = f'last behind at epoch {behind[-1]:.0f}' if behind else 'never behind'
            lines.append(f'{flow}: ahead of none at {len(shared) - len(behind)} of {len(shared)} evaluations '
                         f'({last}), lead {shared[-1][1]:+.2f} nats at epoch {shared[-1][0]:.0f}')
    return lines


def flow_color(flow):
    """One colour per flow in every figure, its variants (e.g. sylvester-orthogonal-m16) included; the plain VAE black."""
    base = re.sub(r'-m\d+$', '', flow)
    return 'k' if base == 'none' else f'C{FLOW_ORDER.index(base) - 1}' if base in FLOW_ORDER else None


def curves(section, path):
    """Validation ELBO against epoch, seed 0 of each run: amortized flows on the left, static on the right, the plain
    VAE in black on both; then each flow's lead over the plain VAE (curve_leads)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    found = seed0_curves(section)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True, layout='constrained')
    for ax, mode in zip(axes, ('amortized', 'static')):
        for label, points in found.items():
            if label == 'none' or label.startswith(mode + ' '):
                flow = label.removeprefix(mode + ' ')
                ax.plot([epoch for epoch, _ in points], [value for _, value in points], lw=1.2, label=flow,
                        color=flow_color(flow))
        ax.set(xlabel='epoch', title=f'{os.path.basename(section.rstrip("/"))}: {mode} flows')
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    axes[0].set_ylabel('validation ELBO (nats)')
    tops = [line.get_ydata().max() for ax in axes for line in ax.get_lines()]
    if tops:   # the late epochs, where the flows differ, not the first ones
        axes[0].set_ylim(min(tops) - 6, max(tops) + 0.5)
    fig.savefig(path, dpi=120)
    print(f'wrote {path}')
    print('\n'.join(curve_leads(found)))


def gap_points(runs):
    """{(mode, flow): (mean, standard deviation or 0, seeds, mean exact log p(x))} of exact − ELBO over the seeds
    of each row of `runs` (finished_runs) that has the exact log p(x)."""
    points = {}
    for (_, mode, flow), group in runs.items():
        finals = [final for _, final, _ in group if 'test_log_px_exact' in final]
        gaps = [final['test_log_px_exact'] - final['test_elbo'] for final in finals]
        if gaps:
            points[mode, flow] = (statistics.mean(gaps), statistics.stdev(gaps) if len(gaps) > 1 else 0.0, len(gaps),
                                  statistics.mean(final['test_log_px_exact'] for final in finals))
    return points


def seed_picks(runs, count=2):
    """['MODE:FLOW', ...]: the `count` flows of `runs` (finished_runs) that close the most of the plain VAE's
    exact − ELBO, among those whose mean exact log p(x) is not below the plain VAE's seed spread (its mean minus one
    standard deviation over seeds): a smaller gap of a worse decoder is not a closer posterior. Means as gap_points."""
    points = gap_points(runs)
    none_log_px = [final['test_log_px_exact'] for (_, mode, flow), group in runs.items()
                   if (mode, flow) == ('static', 'none') for _, final, _ in group if 'test_log_px_exact' in final]
    if len(none_log_px) < 2:
        return []
    floor = statistics.mean(none_log_px) - statistics.stdev(none_log_px)
    none_gap = points['static', 'none'][0]
    closed = sorted(((1 - gap / none_gap, f'{mode}:{flow}') for (mode, flow), (gap, _, _, log_px) in points.items()
                     if flow != 'none' and log_px >= floor), reverse=True)
    return [name for _, name in closed[:count]]


def gap_figure(section, path):
    """exact − ELBO of each flow, static and amortized side by side (mean over seeds, bars their standard deviation),
    against the plain VAE's mean (line) and its spread over seeds (band). Beside each point, its log p(x) minus
    the plain VAE's: a smaller gap of a worse model is another decoder's, not a better posterior."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    gaps = gap_points(finished_runs(section))
    flows = [flow for flow in FLOW_ORDER if any((mode, flow) in gaps for mode in MODES) and flow != 'none']
    fig, ax = plt.subplots(figsize=(7.5, 4), layout='constrained')
    none = gaps.get(('static', 'none'))
    if none:
        mean, spread, seeds, _ = none
        ax.axhline(mean, color='k', lw=1, label=f'none ({seeds} seed{"s" * (seeds > 1)})')
        ax.axhspan(mean - spread, mean + spread, color='k', alpha=0.12, lw=0)
    for offset, mode in zip((-0.15, 0.15), MODES):
        found = [(i + offset, *gaps[mode, flow]) for i, flow in enumerate(flows) if (mode, flow) in gaps]
        if found:
            x, mean, spread, _, log_px = zip(*found)
            ax.errorbar(x, mean, yerr=spread, fmt='o', capsize=3, label=mode)
            for xi, yi, lp in zip(x, mean, log_px) if none else ():
                ax.annotate(f'{lp - none[3]:+.1f}', (xi, yi), xytext=(4, -3), textcoords='offset points', fontsize=7)
    ax.set_xticks(range(len(flows)), [flow.replace('sylvester-', 'sylvester-\n') for flow in flows], fontsize=8)
    ax.set_xlim(-0.5, len(flows) - 0.5)
    name = os.path.basename(section.rstrip('/'))
    ax.set_ylabel('exact − ELBO (nats)')
    ax.set_title(f'{name}: the mean KL(q_K ‖ p(z|x))\nbeside each point, its log p(x) − the plain VAE\'s',
                 fontsize=10)
    ax.grid(alpha=0.3, axis='y')
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    print(f'wrote {path}')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('sections', nargs='+', help='folders results/SECTION')
    p.add_argument('--curves', help='also draw the validation curves of the (first) section into this PNG')
    p.add_argument('--gaps', help='also draw the exact − ELBO of the (first, 2-D) section\'s runs into this PNG')
    p.add_argument('--seeds_of', type=int, metavar='N', help='only print the N flows of the (first, 2-D) section '
                   'that get more seeds, e.g. SEEDS_OF="$(... --seeds_of 2)"')
    a = p.parse_args()
    if a.seeds_of is not None:
        if a.seeds_of < 1:
            p.error(f'--seeds_of {a.seeds_of}: give how many flows get more seeds, at least 1 (e.g. --seeds_of 2)')
        print(' '.join(seed_picks(finished_runs(a.sections[0]), a.seeds_of)))
        raise SystemExit
    for s in a.sections:
        table(s)
    if a.curves:
        curves(a.sections[0], a.curves)
    if a.gaps:
        gap_figure(a.sections[0], a.gaps)
