"""A&D vs supervised and M&N under domain shift on LA: UDA and SemiDG on simulated scanner domains.

1. Writes the simulated-domain copy of LA (``semi3d.data.domain_shift``; skipped when it exists
   with the same plan): the ids of ``train.list`` but the last ``--n-dev`` are rendered, round-robin,
   in the source domains A, B, C; the ``--n-dev`` dev ids are rendered in B (the UDA target's test
   cases) and in D (SemiDG's unseen domain). Lists: ``<D>.list``, ``<D>_train.list``,
   ``<D>_test.list``, ``semidg_train.list`` (A, B, C training ids interleaved), ``all.list``, and
   ``domains.json`` (every case's domain tag: the runs' ``domain`` split selectors read it and
   each run records the tags in its ``splits.json``).
2. For each setting and method trains one resumable run and evaluates it on the sealed test split.
   Every method of a setting gets the same data and splits (:func:`split_sets`):
   UDA: labelled = domain A (all of it), unlabelled = domain B but its test cases, test = B_test.list;
   SemiDG: labelled = the first ``--labelled`` ids of semidg_train.list, unlabelled = the others,
   test = domain D (all of it, unseen).
   ``ad`` runs ``configs/la_ad_<setting>_cpu.yaml``. ``supervised`` runs the same config with
   ``method.name=supervised`` (the config's ``model.net3d``, the V-Net backbone of A&D's student),
   no unlabelled split and the trainer's augmentation set to about A&D's strength (scale, gamma,
   contrast, brightness each with p 0.35; no blur or rotation there). ``mn`` runs
   ``configs/la_mn_cpu.yaml`` (its 3D U-Net + ImageNet-pretrained 2D slice model, schedule,
   augmentation and options; its validation split dropped). Any other method name runs the A&D
   config with ``method.name=<name>`` and that method's default options.
3. Writes ``benchmarks/results/domains_la_<setting>_<method>.json`` and ``domains_la.md``.

``--set`` overrides go to every run, ``--set-for METHOD KEY=VALUE`` to that method's runs only
(e.g. network sizes: the methods' configs differ there).

    PYTHONPATH=src python benchmarks/domains_la.py                          # both settings, ad supervised mn
    PYTHONPATH=src python benchmarks/domains_la.py --settings uda --methods ad
    PYTHONPATH=src python benchmarks/domains_la.py --set seed=1 --tag _s1    # any override, every run
    PYTHONPATH=src python benchmarks/domains_la.py --set-for ad train.iterations=400  # one method's runs
    PYTHONPATH=src python benchmarks/domains_la.py --minutes 10   # same CPU budget per run, as compare_la.py

Rerun the same command after an interruption: finished runs are skipped, unfinished ones resume.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from semi3d.atomic import write_text
from semi3d.config import load_config
from semi3d.data.domain_shift import DOMAINS, holds_domain_dataset, interleave, write_domain_dataset
from semi3d.data.splits import read_id_list
from semi3d.evaluation.summary import table_markdown

# benchmarks/ (this script's folder) is sys.path[0] when run; the tests put it there
from benchlib import command_line, foreground, git_commit, machine, script, train_and_evaluate
from compare_la import budget, budget_sets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SETTINGS = {"uda": "UDA: labelled source A -> unlabelled target B, tested on B",
            "semidg": "SemiDG: labelled + unlabelled from A, B, C, tested on unseen D"}
SUPERVISED_SETS = ["method.name=supervised", "method.options={}", "data.splits.unlabelled=none",
                   "data.augment.p_scale=0.35", "data.augment.scale_range=[1.0,1.43]",
                   "data.augment.p_gamma=0.35", "data.augment.gamma_range=[0.7,1.3]",
                   "data.augment.p_contrast=0.35", "data.augment.contrast_range=[0.7,1.3]",
                   "data.augment.p_brightness=0.35", "data.augment.brightness_range=[0.7,1.3]"]


def domain_plan(ids: list[str], n_dev: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``({domain: source ids}, {domain: n_test})``: training ids round-robin in A, B, C; the last
    ``n_dev`` ids in B (held out as B's test cases) and in D (all test)."""
    if not 0 < n_dev < len(ids) - 2:
        raise SystemExit(f"--n-dev must leave at least 3 training ids (have {len(ids)} ids)")
    train_ids, dev = ids[: len(ids) - n_dev], ids[len(ids) - n_dev:]
    plan = {"A": train_ids[0::3], "B": train_ids[1::3] + dev, "C": train_ids[2::3], "D": dev}
    return plan, {"B": n_dev, "D": n_dev}


def make_domains(la_root: Path, list_file: Path, out: Path, n_dev: int, seed: int, strength: float = 1.0) -> Path:
    """The simulated-domain copy of LA in ``out`` (written unless it holds this plan, seed and these
    shifts): :data:`DOMAINS` at ``strength`` (``ScannerShift.scaled``)."""
    ids = read_id_list(list_file)
    plan, n_test = domain_plan(ids, n_dev)
    shifts = {d: DOMAINS[d].scaled(strength) for d in plan}
    if holds_domain_dataset(out, plan, shifts, seed):
        print(f"domains: {out} exists with this plan", flush=True)
        return out
    print(f"domains: writing {sum(map(len, plan.values()))} volumes to {out} ...", flush=True)
    semidg = interleave(*[[f"{d}_{i}" for i in plan[d][: len(plan[d]) - n_test.get(d, 0)]] for d in "ABC"])
    return write_domain_dataset(la_root, out, plan, src_options={"list_file": str(list_file)}, domains=shifts,
                                seed=seed, n_test=n_test, lists={"semidg_train": semidg})


def run_name(setting: str, method: str, tag: str) -> str:
    return f"domains_la_{setting}_{method}{tag}"


def split_sets(setting: str, a, domains_root: Path) -> list[str]:
    """The data and split overrides every method of ``setting`` shares (whole split specs, so they
    replace whatever the method's config selects). ``domain`` selectors where they equal the id
    lists: A has no test cases, B's test cases are sealed before the other splits are taken, D is
    all test."""
    r = str(domains_root)

    def spec(split: str, **sel) -> str:
        return f"data.splits.{split}={json.dumps(sel)}"

    sets = [f"data.root={r}", f"data.options.list_file={r}/all.list", "data.splits.validation=null"]
    if setting == "uda":
        return sets + [spec("labelled", domain="A"), spec("unlabelled", domain="B"),
                       spec("test", list=f"{r}/B_test.list")]
    n_train = len(read_id_list(domains_root / "semidg_train.list"))
    if not 0 < a.labelled < n_train:
        raise SystemExit(f"--labelled must be in 1..{n_train - 1}")
    return sets + [spec("labelled", list=f"{r}/semidg_train.list", first=a.labelled),
                   spec("unlabelled", list=f"{r}/semidg_train.list", last=n_train - a.labelled),
                   spec("test", domain="D")]


def run_sets(setting: str, method: str, a, domains_root: Path) -> tuple[Path, list[str]]:
    """The config file and overrides of one run (before any ``--minutes`` budget)."""
    config = ROOT / "configs" / ("la_mn_cpu.yaml" if method == "mn" else f"la_ad_{setting}_cpu.yaml")
    sets = [f"name={run_name(setting, method, a.tag)}", f"output_dir={a.runs}"] + split_sets(setting, a, domains_root) + a.set
    if method == "supervised":  # no unlabelled split: drop its selectors
        sets = [s for s in sets if not s.startswith("data.splits.unlabelled")] + SUPERVISED_SETS
    elif method not in ("ad", "mn"):  # another semi-supervised method on the same data, with its default options
        sets += [f"method.name={method}", "method.options={}"]
    return config, sets + [kv for m, kv in a.set_for if m == method]


def with_budget(setting: str, method: str, a, config: Path, sets: list[str]) -> list[str]:
    """``sets`` plus the iteration count that fills ``a.minutes`` of training on this machine and the
    schedule scaled to it (``compare_la.budget`` / ``budget_sets``: step time measured once, kept in
    ``<results>/domains_la_budget.json``)."""
    if not a.minutes:
        return sets
    iters = budget(Path(a.results) / "domains_la_budget.json", method, str(config), sets, a.minutes,
                   f"_{setting}{a.tag}")
    return sets + budget_sets(load_config(config, sets).model_dump(mode="json"), iters)


def run_one(setting: str, method: str, a, command: str, config: Path, sets: list[str]) -> dict:
    name = run_name(setting, method, a.tag)
    cfg = load_config(config, sets)
    r = train_and_evaluate(cfg, "test")
    fg = foreground(r["metrics"])
    splits = json.loads((cfg.run_dir / "splits.json").read_text())
    tags = splits.get("domains", {})
    return {
        "name": name, "setting": setting, "setting_description": SETTINGS[setting], "method": cfg.method.name,
        "net2d": cfg.model.net2d.name if cfg.model.net2d else None,
        "command": command, "config": str(config.relative_to(ROOT)),
        "overrides": sets, "commit": git_commit(), "labelled": len(splits["labelled"]), "unlabelled": len(splits["unlabelled"]),
        "test_cases": len(splits["test"]), "eval_split": "test",
        "split_domains": {k: sorted({tags.get(i, "default") for i in splits[k]}) for k in ("labelled", "unlabelled", "test")},
        "dice": fg["dice"], "jaccard": fg["jaccard"], "hd95": fg["hd95"], "asd": fg["asd"],
        "dice_std": fg.get("dice_std"), "iterations": r["summary"]["iterations"],
        **{k: r[k] for k in ("train_wall_s_this_invocation", "train_wall_s_total", "eval_wall_s", "resumed")},
        "machine": machine(),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--la-root", default="../shared/data/LA", help="UA-MT h5 LA folder")
    ap.add_argument("--list-file", default=None, help="id list (default <la-root>/train.list)")
    ap.add_argument("--domains-root", default="runs/data/LA_domains", help="where the simulated domains go")
    ap.add_argument("--n-dev", type=int, default=16, help="last ids of the list: the test cases")
    ap.add_argument("--domain-seed", type=int, default=0)
    ap.add_argument("--strength", type=float, default=1.0, help="the simulated shifts' strength "
                    "(ScannerShift.scaled; shift_gap_la.py measures the gap each gives); other than 1 it "
                    "adds _x<strength> to --tag and --domains-root, so runs and data of strengths never mix")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["uda", "semidg"])
    ap.add_argument("--methods", nargs="+", default=["ad", "supervised", "mn"])
    ap.add_argument("--labelled", type=int, default=8, help="SemiDG: labelled cases (first of the interleaved list)")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--set-for", nargs=2, action="append", default=[], metavar=("METHOD", "KEY=VALUE"),
                    help="config override for that method's runs only (after --set)")
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--tag", default="", help="suffix of run and result names")
    ap.add_argument("--minutes", type=float, default=None,
                    help="CPU budget: training wall time per run; sets each method's iterations from its "
                         "measured step time and scales its schedule (as compare_la.py); default: the configs' iterations")
    a = ap.parse_args(argv)
    command = command_line(__file__, argv)
    if a.strength != 1:
        a.tag, a.domains_root = f"{a.tag}_x{a.strength:g}", f"{a.domains_root}_x{a.strength:g}"
    la_root = Path(a.la_root)
    domains_root = make_domains(la_root, Path(a.list_file) if a.list_file else la_root / "train.list",
                                Path(a.domains_root), a.n_dev, a.domain_seed, a.strength)
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(s, m) for s in a.settings for m in a.methods
            if not (out / f"{run_name(s, m, a.tag)}.json").is_file()]
    # every budget measured before any run, so the runs' own load never skews a measurement
    planned = {}
    for s, m in todo:
        config, sets = run_sets(s, m, a, domains_root)
        planned[s, m] = config, with_budget(s, m, a, config, sets)
    rows = []
    for setting in a.settings:
        for method in a.methods:
            path = out / f"{run_name(setting, method, a.tag)}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text()))
                continue
            res = run_one(setting, method, a, command, *planned[setting, method])
            res["minutes_budget"], res["strength"] = a.minutes, a.strength
            write_text(path, json.dumps(res, indent=1))
            rows.append(res)
            print(json.dumps({k: res[k] for k in ("name", "dice", "hd95", "iterations")}), flush=True)
    cols = ["setting", "method", "labelled", "unlabelled", "test_cases", "dice", "jaccard", "hd95", "asd", "iterations",
            "train_wall_s_this_invocation"]
    write_text(out / f"domains_la{a.tag}.md",
        "# A&D vs supervised and M&N on simulated LA scanner domains\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in SETTINGS.items())
        + f"\n`{command}`\n\n" + table_markdown(rows, cols) + "\n")
    return rows


if __name__ == "__main__":
    script(main)
