"""A sweep's spec (README "Experiments"): the flags every trial shares and the flags that vary, read from YAML
(--sweep SPEC.yaml) or made from --seeds; and trial n's flags, which depend only on n (grid, random) or on n and
the results before it (optuna), never on when or where the trial runs.

    name: lr-wd                 # optional: the runs are <name>-<trial> (default: the file's name)
    config: configs/default.yaml  # optional: flags from a config file, below `base`
    base: {epochs: 3}           # flags of every trial
    grid: {lr: [0.01, 0.1], weight_decay: [0, 0.0005]}      # every combination, in order (the last key fastest)
    random: {trials: 8, seed: 0, space: {lr: {loguniform: [0.001, 0.3]}, optimizer: [sgd, adam]}}
    optuna: {trials: 20, seed: 0, space: {...}}              # Optuna's TPE sampler (pip install optuna)
    seeds: [0, 1, 2]            # optional: every point once per seed (mean, std and 95% interval per point)
    metric: val/acc:max         # optional: what "best trial" means (default: the trials' --monitor)

One of grid, random and optuna (or only seeds). A space entry is a list (a choice) or {uniform: [LOW, HIGH]},
{loguniform: [LOW, HIGH]}, {int: [LOW, HIGH]} (inclusive)."""
import math
import random
from pathlib import Path

import yaml

from . import flags
from .. import tasks
from ..files.paths import read_bounded
from ..runtime.errors import UsageError

METHODS = ("grid", "random", "optuna")
KINDS = ("uniform", "loguniform", "int")
KEYS = ("name", "config", "base") + METHODS + ("seeds", "metric")
NOT_VARIED = flags.PER_INVOCATION + flags.LOCAL + ("run_name", "progress")


def _dest(key, where):
    dest = str(key).replace("-", "_")
    if dest not in flags.BY_DEST or dest in NOT_VARIED:
        raise UsageError("%s: %r is not a flag a sweep can set (a run flag of train.py --help)" % (where, key))
    return dest


def _space(raw, where):
    """{dest: list of choices | (kind, low, high)}."""
    if not isinstance(raw, dict) or not raw:
        raise UsageError("%s: expected a mapping of flag names to choices or ranges" % where)
    out = {}
    for key, value in raw.items():
        dest, at = _dest(key, where), "%s.%s" % (where, key)
        if isinstance(value, list) and value:
            out[dest] = list(value)
            continue
        kind = list(value)[0] if isinstance(value, dict) and len(value) == 1 else None
        bounds = value.get(kind) if kind else None
        ok = (kind in KINDS and isinstance(bounds, list) and len(bounds) == 2
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
              and bounds[0] < bounds[1] and (kind != "loguniform" or bounds[0] > 0)
              and (kind != "int" or all(isinstance(b, int) for b in bounds)))
        if not ok:
            raise UsageError("%s: expected a list of values or one of {uniform: [LOW, HIGH]}, {loguniform: [LOW, "
                             "HIGH]} (LOW > 0), {int: [LOW, HIGH]} with LOW < HIGH" % at)
        out[dest] = [kind] + list(bounds)
    return out


def _count(raw, where, key="trials"):
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100000:
        raise UsageError("%s: %s must be a whole number of trials in 1 .. 100000" % (where, key))
    return value


def _seed(raw, where):
    value = raw.get("seed", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError("%s: seed must be a whole number >= 0" % where)
    return value


def read(path, over, name=None):
    """The spec of --sweep path as plain data (what the sweep's state keeps and compares); `over`: run flags given
    on the command line, which win over the spec's base."""
    where = "sweep spec %s" % path
    blob = read_bounded(path, "--sweep", flags.MAX_CONFIG_BYTES)
    try:
        raw = yaml.safe_load(blob.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise UsageError("%s: not valid YAML (%s); see README \"Experiments\"" % (where, str(err).split("\n")[0]))
    if not isinstance(raw, dict):
        raise UsageError("%s: expected a mapping with base, and one of grid, random, optuna or seeds; see README "
                         "\"Experiments\"" % where)
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise UsageError("%s: unknown key %s (known: %s)" % (where, ", ".join(map(repr, unknown)), ", ".join(KEYS)))
    methods = [m for m in METHODS if m in raw]
    if len(methods) > 1 or not (methods or raw.get("seeds")):
        raise UsageError("%s: give one of grid, random or optuna (or only seeds)" % where)
    base = {}
    if raw.get("config") is not None:
        try:
            base.update(flags.read_config(raw["config"]))
        except UsageError as err:
            raise UsageError("%s: %s" % (where, err))
    base.update(flags.coerce_values(_mapping(raw.get("base") or {}, where + ": base"), where + ": base"))
    for key in base:
        if key in NOT_VARIED:
            raise UsageError("%s: base: %s is set per trial or per command, not in a sweep" % (where, key))
    base.update(over)
    spec = {"name": name or raw.get("name") or Path(path).stem, "base": flags.plain_values(base),
            "method": methods[0] if methods else "grid", "metric": raw.get("metric")}
    if spec["method"] == "grid":
        grid = raw.get("grid") or {}
        if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
            raise UsageError("%s: grid: expected a mapping of flag names to non-empty lists of values" % where)
        spec["grid"] = {_dest(k, where + ": grid"): v for k, v in grid.items()}
    else:
        part = raw[spec["method"]]
        at = "%s: %s" % (where, spec["method"])
        if not isinstance(part, dict):
            raise UsageError("%s: expected trials, seed and space" % at)
        spec.update(trials=_count(part, at), seed=_seed(part, at), space=_space(part.get("space"), at + ".space"))
    seeds = raw.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds):
            raise UsageError("%s: seeds: expected a list of distinct seeds such as [0, 1, 2]" % where)
        if spec["method"] == "optuna":
            raise UsageError("%s: seeds cannot be combined with optuna (a trial is one point for its sampler); "
                             "use grid or random" % where)
        spec["seeds"] = seeds
    return check(spec, where)


def _mapping(value, where):
    if not isinstance(value, dict):
        raise UsageError("%s: expected a mapping of flag names to values" % where)
    return value


def of_seeds(name, base, seeds):
    """--seeds S1,S2,...: the flags given, once per seed."""
    return check({"name": name, "base": flags.plain_values(base), "method": "grid", "grid": {}, "metric": None,
                  "seeds": list(seeds)}, "--seeds")


def check(spec, where):
    """Every value a trial can get checked as its flag's (fixed ones: each; ranges: their ends), so that a bad value
    fails now, before any trial ran."""
    flags.check_run_name(spec["name"], "the sweep's name (name: in the spec, or --run-name)")
    if len(spec["name"]) > flags.MAX_RUN_NAME - 8:  # its runs are <name>-<trial>: room for a trial number
        raise UsageError("the sweep's name %s... is %d characters; its trials' runs are <name>-<trial>, so use at "
                         "most %d (name: in the spec, or --run-name)" % (spec["name"][:30], len(spec["name"]),
                                                                        flags.MAX_RUN_NAME - 8))
    if spec["metric"] is not None:
        spec["metric"] = str(spec["metric"])
    try:
        base_cfg, _ = flags.parse(["--run-name", "check"], base=flags.coerce_values(spec["base"], where))
    except UsageError as err:
        raise UsageError("%s: base: %s" % (where, err))
    spec["monitor"] = str(base_cfg.monitor)  # the trials' own: what "best" means unless metric says otherwise
    if spec["metric"] and not (spec["metric"].startswith("val/") and spec["metric"].rpartition(":")[2] in
                               ("min", "max")):
        raise UsageError("%s: metric: expected a validation metric as val/NAME:min or val/NAME:max, such as "
                         "val/loss:min (the best trial is chosen on validation data, never on test data)" % where)
    known = ["val/" + m for m in tasks.get(base_cfg.task).METRICS]
    if spec["metric"] and spec["metric"].rpartition(":")[0] not in known:
        raise UsageError("%s: metric %s: --task %s has %s" % (where, spec["metric"], base_cfg.task, ", ".join(known)))
    samples = [{}]
    for dest, entry in (spec["grid"] if spec["method"] == "grid" else spec["space"]).items():
        values = entry[1:] if isinstance(entry[0], str) and entry[0] in KINDS else entry
        samples += [{dest: v} for v in values]
    for seed in spec.get("seeds") or [None]:
        for values in samples:
            trial = dict(spec["base"], **values)
            if seed is not None:
                trial["seed"] = seed
            try:
                flags.parse(["--run-name", "check"], base=flags.coerce_values(trial, where))
            except UsageError as err:
                raise UsageError("%s: a trial with %s: %s" % (where, values or "the base flags", err))
    return spec


def total_points(spec):
    if spec["method"] != "grid":
        return spec["trials"]
    n = 1
    for values in spec["grid"].values():
        n *= len(values)
    return n


def total(spec):
    """The number of trials of the sweep."""
    return total_points(spec) * len(spec.get("seeds") or [None])


def point(spec, i):
    """The varied flags of grid point i (the last key changes fastest)."""
    values = {}
    for dest, choices in reversed(list(spec["grid"].items())):
        i, j = divmod(i, len(choices))
        values[dest] = choices[j]
    return dict(reversed(list(values.items())))


def draw(space, rng):
    values = {}
    for dest, entry in space.items():
        if isinstance(entry[0], str) and entry[0] in KINDS:
            kind, low, high = entry
            if kind == "int":
                values[dest] = rng.randint(low, high)
            elif kind == "loguniform":
                values[dest] = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                values[dest] = rng.uniform(low, high)
        else:
            values[dest] = entry[rng.randrange(len(entry))]
    return values


def trial(spec, n, history):
    """The varied flags of trial n (seed included when the spec has seeds); None past the last trial. history:
    (flags, value of the metric) of the finished trials, for optuna."""
    if n >= total(spec):
        return None
    seeds = spec.get("seeds") or [None]
    i, s = divmod(n, len(seeds))
    if spec["method"] == "grid":
        values = point(spec, i)
    elif spec["method"] == "random":
        values = draw(spec["space"], random.Random("%d/%d" % (spec["seed"], i)))  # a str seed: the same everywhere
    else:
        from . import sweep_optuna
        values = sweep_optuna.ask(spec, n, history)
    if seeds[s] is not None:
        values["seed"] = seeds[s]
    return values
