"""`pastkit` command line: a thin layer over functions a notebook can call directly."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

from . import __version__

DESCRIPTION = """\
pastkit: Parametric Skill Transfer (PaST) tools.

  The skill vector is v = θ_rl − θ_sft: what RL added on top of a knowledge-SFT model.
  For a new domain, fine-tune on its documents only (θ_T), then add λ·v.

  pastkit model materialize smollm2-135m-instruct     print the local dir of the default model
  pastkit vector extract --rl RL --sft SFT -o v.safetensors
  pastkit vector inject --model T --vector v.safetensors --lam 1.0 -o OUT
  pastkit cosine --base BASE A B -o table.csv --heatmap fig.png
  pastkit probe --profile cpu --regime single          how many invented facts the knowledge SFT teaches
  pastkit run --profile smoke                          execute every notebook with papermill
  pastkit run --profile quick --only 02_squad -p rounds 1   one notebook, one parameter overridden
  pastkit run --profile cpu --reference                the reference run: regenerate figures/ (make figures)
  pastkit stages --unused-for 2h [--delete]            the stage cache: what no run used lately, and pruning it

Checkpoints are HF model dirs with safetensors weights (sharded or not) or peft LoRA adapter dirs.
Pickle weights are never loaded. Outputs are written atomically; an existing output needs --force.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pastkit", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pastkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="the embedded default model and the tiny test model")
    msub = model.add_subparsers(dest="action", required=True)
    mat = msub.add_parser("materialize", help="convert an embedded model to a safetensors dir, print the dir")
    mat.add_argument("name", choices=["smollm2-135m-instruct", "tiny-random"])

    vec = sub.add_parser("vector", help="extract or inject a skill vector")
    vsub = vec.add_subparsers(dest="action", required=True)
    ext = vsub.add_parser("extract", help="v = θ_rl − θ_sft, saved as safetensors with provenance metadata")
    ext.add_argument("--rl", required=True, help="the RL-tuned model dir (or LoRA adapter dir)")
    ext.add_argument("--sft", required=True, help="the SFT model it started from (or LoRA adapter dir)")
    ext.add_argument("--base", help="base model dir; needed only when one side is a LoRA adapter and the other not")
    ext.add_argument("-o", "--out", required=True, help="output .safetensors file")
    ext.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                     help="stored dtype of v (default float32: exact differences; bfloat16 halves the size)")
    inj = vsub.add_parser("inject", help="θ_final = θ_T + λ·v, written as a new model dir")
    inj.add_argument("--model", required=True, help="the target model dir θ_T (or LoRA adapter dir + --base)")
    inj.add_argument("--vector", required=True, help="a skill vector .safetensors from `pastkit vector extract`")
    inj.add_argument("--lam", type=float, default=1.0, help="scale λ (paper default 1.0; any finite value)")
    inj.add_argument("--base", help="base model dir when --model is a LoRA adapter")
    inj.add_argument("-o", "--out", required=True, help="output model dir (keeps the model's sharding)")
    for sp in (ext, inj):
        sp.add_argument("--vocab", default="error", choices=["error", "overlap"],
                        help="embedding rows differ in count: refuse (default) or combine the shared rows")
        sp.add_argument("--force", action="store_true", help="replace an existing output")

    cos = sub.add_parser("cosine", help="per-tensor cosine between two parameter updates (paper Fig. 2)")
    cos.add_argument("a", help="fine-tuned model A (or a delta: skill vector file / LoRA adapter)")
    cos.add_argument("b", help="fine-tuned model B (or a delta)")
    cos.add_argument("--base", help="the model both started from; omit when A and B are deltas already")
    cos.add_argument("-o", "--out", required=True, help="output CSV: one row per tensor")
    cos.add_argument("--heatmap", help="also draw a layers × modules heatmap to this PNG")
    cos.add_argument("--title", default="cos(ΔA, ΔB)", help="the heatmap's title (default: cos(ΔA, ΔB))")
    cos.add_argument("--vocab", default="error", choices=["error", "overlap"],
                     help="embedding rows differ in count: refuse (default) or compare the shared rows")
    cos.add_argument("--force", action="store_true", help="replace existing outputs (only ones pastkit wrote)")

    probe = sub.add_parser("probe", help="how many invented facts a knowledge SFT teaches (the knowledge probe)")
    probe.add_argument("--profile", default="cpu", help="params profile whose model and SFT settings to use")
    probe.add_argument("--regime", default="single", choices=["single", "cpt"],
                       help="LoRA on one passage at a time (single) or full FT on all passages at once (cpt)")
    probe.add_argument("--variant", default="target", choices=["passage_only", "sentences", "target"],
                       help="SFT data: the passage; + each of its sentences; + self-generated implications")
    probe.add_argument("--seed", type=int, default=0)

    run = sub.add_parser("run", help="execute the notebooks of a params profile with papermill")
    run.add_argument("--profile", default="cpu", help="a name in params/ (smoke, cpu, paper) or a YAML path")
    run.add_argument("--only", nargs="*", help="notebook names to run (default: all, in order)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter for every notebook that declares it, as papermill's -p "
                          "(the value is read as YAML: -p rounds 1, -p seeds '[0, 1]'); repeatable")
    run.add_argument("--reference", action="store_true",
                     help="write the committed reference results into figures/ and their pages into docs/results/ "
                          "(cpu profile only, no -p; `make figures`)")

    stages = sub.add_parser("stages", help="the stage cache ($PASTKIT_RUNS): sizes, build times, and stages no "
                                           "run used lately")
    stages.add_argument("--unused-for", metavar="AGE",
                        help="list the stages no run built or read back in this long (e.g. 90m, 2h, 3d)")
    stages.add_argument("--delete", action="store_true", help="delete the stages --unused-for lists")
    return p


def _age_seconds(text: str) -> float:
    """'90m', '2h', '3d' -> seconds; anything else is a clear error."""
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        number, unit = float(text[:-1]), units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"--unused-for {text!r}: a number with m, h or d (e.g. 90m, 2h, 3d)") from None
    if number < 0:
        raise ValueError(f"--unused-for {text!r}: must not be negative")
    return number * unit


def _stages(args) -> None:
    import time
    from collections import Counter, defaultdict

    from .places import runs_dir
    from .stages import cached_stages, describe_machine, prune, stage_record

    def gb(stages) -> str:
        return f"{sum(c.bytes for c in stages) / 1e9:.2f} GB"

    def when(seconds: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))

    if args.unused_for is None:
        if args.delete:
            raise ValueError("--delete needs --unused-for: say which stages to delete")
        kinds = defaultdict(list)
        for c in cached_stages():
            kinds[c.name].append(c)
        every = [c for cs in kinds.values() for c in cs]
        records = {c.path: stage_record(c.path) for c in every}  # each stage.json read once

        def built(stages) -> str:  # how long they took to build: where a run's time went
            return f"{sum(records[c.path].get('seconds', 0) for c in stages) / 60:.1f} min to build"

        print(f"{runs_dir()}: {len(every)} stages, {gb(every)}, {built(every)}")
        for name, cs in sorted(kinds.items()):
            print(f"  {name:<18} {len(cs):>4} stages {gb(cs):>10} {built(cs):>18}   "
                  f"last used {when(max(c.last_used for c in cs))}")
        for where, n in Counter(describe_machine(records[c.path].get("machine")) for c in every).most_common():
            print(f"  built on {where}: {n} stage{'s' * (n != 1)}")
        return
    old = prune(time.time() - _age_seconds(args.unused_for), delete=args.delete)
    for c in old:
        print(f"  {c.path.name:<32} {gb([c]):>9}   last used {when(c.last_used)}")
    verb = "deleted" if args.delete else "not used for " + args.unused_for + " (pass --delete to delete them)"
    print(f"{len(old)} stages, {gb(old)}: {verb}")


@contextlib.contextmanager
def _degenerate_said():
    """Say a degenerate result (a zero skill vector) on stderr as a warning line; the command still succeeds."""
    from .skill_vector import DegenerateWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateWarning)
        yield
    for w in caught:
        print(f"pastkit: warning: {w.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: missing files, read-only or full disks
        print(f"pastkit: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "stages":
        _stages(args)
    elif args.command == "model":
        from .models import resolve
        print(resolve(args.name))
    elif args.command == "vector" and args.action == "extract":
        import torch

        from .skill_vector import SkillVector
        with _degenerate_said():
            v = SkillVector.extract(args.rl, args.sft, base=args.base, vocab=args.vocab)
            v.save(args.out, dtype=getattr(torch, args.dtype), force=args.force)
        print(f"{args.out}: {v!r}")
    elif args.command == "vector" and args.action == "inject":
        from .skill_vector import inject
        with _degenerate_said():
            out = inject(args.model, args.vector, args.out, lam=args.lam, base=args.base, force=args.force,
                         vocab=args.vocab)
        print(out)
    elif args.command == "cosine":
        import matplotlib
        matplotlib.use("Agg")

        from .orthogonality import save_cosine
        table, s = save_cosine(args.a, args.b, args.out, base=args.base, heatmap_png=args.heatmap, title=args.title,
                               vocab=args.vocab, force=args.force)
        if s["zero_delta_tensors"]:
            print(f"pastkit: warning: {s['zero_delta_tensors']} of {s['tensors']} tensors are unchanged in A or B "
                  "(zero delta): their cosine is undefined and left out of the summary", file=sys.stderr)
        print(f"{s['tensors']} tensors  mean |cos| {s['mean_abs_cos']:.4g}  max |cos| {s['max_abs_cos']:.4g}  "
              f"×random {s['times_random']:.3g} (1 = unrelated directions)")
    elif args.command == "probe":
        from .benchmarks.squad import SquadParams, knowledge_probe
        from .config import load_profile
        params = SquadParams.from_profile(load_profile(args.profile))
        table, _ = knowledge_probe(params, args.regime, args.variant, args.seed)
        cols = ["method", "n_items", "contains", "contains_ci_low", "contains_ci_high", "exact", "score"]
        print(table[cols].to_markdown(index=False))
    elif args.command == "run":
        from .config import read_yaml
        from .driver import run_profile
        overrides = {name: read_yaml(value) for name, value in args.parameter}
        run_profile(args.profile, only=args.only, reference=args.reference, overrides=overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
